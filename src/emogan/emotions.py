"""The 7 basic emotions in FER2013's label order, used everywhere a label is an integer."""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
LABEL_OF: dict[str, int] = {name: label for label, name in enumerate(EMOTIONS)}
