"""MTCNN's five facial landmarks in the order it returns them: the names that crops.csv, the
alignment template (crop.template) and the review tool share. A module of its own so that the
review server can name them without importing torch."""

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def landmark_columns() -> tuple[str, ...]:
    """crops.csv's columns for them: left_eye_x, left_eye_y, ..."""
    return tuple(f"{name}_{axis}" for name in LANDMARKS for axis in "xy")
