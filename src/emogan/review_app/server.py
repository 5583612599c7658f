"""The review tool's HTTP server: the page, the crops, the source photos and a small JSON API.

Standard library only. Every decision goes straight to the decisions file through
`emogan.data.review`, which locks and writes atomically, so any number of tabs (or servers) can
share one file. Files are served only by crop id, looked up in crops.csv: a request names no path.
The crop judge's scores, when they match crops.csv, give the suspect order and a hint per crop;
the hint is never written anywhere until the reviewer accepts it as a decision.
"""

import contextlib
import getpass
import io
import json
import signal
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageDraw

from emogan.config import ReviewConfig
from emogan.data.crop import CropRecord, read_crops
from emogan.data.crop_scores import CropScore, read_crop_scores
from emogan.data.images import read_rgb
from emogan.data.review import (
    ReviewDecision,
    forget_decision,
    parse_decision,
    read_decisions,
    record_decision,
)
from emogan.data.review_queue import ORDERS, confidence_order, suspect_order
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError

PHOTO_MAX_SIDE = 1024
MAX_BODY_BYTES = 64 * 1024
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
JSON_TYPE = "application/json"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
FACE_BOX_COLOUR = (255, 200, 0)
OTHER_FACES_COLOUR = (0, 190, 255)
LANDMARK_COLOUR = (255, 60, 160)

Reply = tuple[bytes, str]  # body, content type


class HttpError(EmoganError):
    """A request the server refuses: the status and a one-line message for the page."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _inside(folder: Path, relative: str) -> Path | None:
    """`folder / relative`, or None where that lies outside `folder` (a hand-edited crops.csv)."""
    path = (folder / relative).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def _text(body: dict, key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{key} must be a string")
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ReviewSession:
    """The crops under review and their decisions file: what every request is answered from."""

    def __init__(
        self,
        cfg: ReviewConfig,
        crops_dir: Path,
        raw_dir: Path,
        reviewer: str,
        scores_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.crops_dir = Path(crops_dir)
        self.raw_dir = Path(raw_dir)
        self.reviewer = reviewer
        crops = confidence_order(read_crops(self.crops_dir))
        self.crops = {crop.crop_id: crop for crop in crops}
        self.scores: dict[str, CropScore] = {}
        # Why there is no suspect order, None where there is one. Stale or missing scores
        # leave the confidence order: the review must not wait for the crop judge.
        self.suspect_unavailable: str | None = "no crop scores given"
        if scores_path is not None:
            try:
                self.scores = read_crop_scores(scores_path, crops)
                self.suspect_unavailable = None
            except EmoganError as error:
                self.suspect_unavailable = str(error)
        self.orders = {"confidence": list(self.crops)}
        if self.suspect_unavailable is None:
            self.orders["suspect"] = [c.crop_id for c in suspect_order(crops, self.scores)]
        self._faces_by_photo: dict[str, list[CropRecord]] = {}
        for crop in self.crops.values():
            self._faces_by_photo.setdefault(crop.source_sha256, []).append(crop)
        self._writing = threading.Lock()

    def state(self) -> dict:
        decisions = read_decisions(self.cfg.decisions)
        return {
            "emotions": list(EMOTIONS),
            "unreviewed_policy": self.cfg.unreviewed,
            "decisions_path": str(self.cfg.decisions),
            "reviewer": self.reviewer,
            "crops": [self._view(crop, decisions.get(key)) for key, crop in self.crops.items()],
            "progress": self._progress(decisions),
            # order -> crop ids, null where unavailable; the first available is the default
            "orders": {name: self.orders.get(name) for name in ORDERS},
            "suspect_unavailable": self.suspect_unavailable,
        }

    def decide(self, body: dict) -> dict:
        """Record a keep, drop or relabel made now by this session's reviewer."""
        crop = self._crop_named_in(body)
        fields = {"action": _text(body, "action"), "label": _text(body, "label", "")}
        decision = self._validated(
            {**fields, "crop_id": crop.crop_id, "reviewer": self.reviewer, "decided_at": _now()}
        )
        if decision.action == "relabel" and decision.label == crop.emotion:
            # A "relabel" to the photo's own emotion is a keep; recording it as one keeps the
            # review stage's counts honest.
            decision = replace(decision, action="keep", label="")
        with self._writing:
            record_decision(self.cfg.decisions, decision)
        return self._answer(crop)

    def undo(self, body: dict) -> dict:
        """Put back the decision a crop had before (`previous`, as /api/state gave it), or none."""
        crop = self._crop_named_in(body)
        previous = body.get("previous")
        if previous is not None and not isinstance(previous, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "previous must be a decision or null")
        with self._writing:
            if previous is None:
                forget_decision(self.cfg.decisions, crop.crop_id)
            else:
                fields = {key: _text(previous, key, "") for key in ("action", "label", "note")}
                fields |= {key: _text(previous, key) for key in ("reviewer", "decided_at")}
                decision = self._validated({**fields, "crop_id": crop.crop_id})
                record_decision(self.cfg.decisions, decision)
        return self._answer(crop)

    def close(self) -> None:
        """Wait for a write in progress, then hold the write lock for good: the process can exit
        without cutting a write in half (request threads are daemons)."""
        self._writing.acquire()

    def crop_png(self, crop_id: str) -> bytes:
        crop = self._crop(crop_id)
        path = _inside(self.crops_dir, crop.path)
        if path is None or not path.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, f"crop image {crop.path} is missing")
        return path.read_bytes()

    def photo_jpeg(self, crop_id: str) -> bytes:
        """The crop's source photo, scaled down, with its face box and landmarks (and its
        neighbours' boxes) drawn: the landmarks are what the crop was aligned on."""
        crop = self._crop(crop_id)
        path = _inside(self.raw_dir, crop.source_path)
        if path is None or not path.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, f"source photo {crop.source_path} is missing")
        image = Image.fromarray(read_rgb(path))
        full_width = image.width
        image.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE))
        scale = image.width / full_width
        draw = ImageDraw.Draw(image)
        line = max(2, round(max(image.size) / 250))
        for face in self._faces_by_photo[crop.source_sha256]:
            if face is not crop:
                draw.rectangle([v * scale for v in face.box], outline=OTHER_FACES_COLOUR, width=1)
        draw.rectangle([v * scale for v in crop.box], outline=FACE_BOX_COLOUR, width=line)
        radius = line * 1.5
        for x, y in crop.landmarks:
            dot = [x * scale - radius, y * scale - radius, x * scale + radius, y * scale + radius]
            draw.ellipse(dot, fill=LANDMARK_COLOUR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88)
        return buffer.getvalue()

    def _crop(self, crop_id: str) -> CropRecord:
        try:
            return self.crops[crop_id]
        except KeyError:
            raise HttpError(HTTPStatus.NOT_FOUND, f"unknown crop {crop_id!r}") from None

    def _crop_named_in(self, body: dict) -> CropRecord:
        return self._crop(_text(body, "crop_id"))

    @staticmethod
    def _validated(row: dict[str, str]) -> ReviewDecision:
        try:
            return parse_decision(row, "decision")
        except EmoganError as error:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(error)) from None

    def _answer(self, crop: CropRecord) -> dict:
        """What the page needs after a change: the crop as it now stands, and the counts."""
        decisions = read_decisions(self.cfg.decisions)
        return {
            "crop": self._view(crop, decisions.get(crop.crop_id)),
            "progress": self._progress(decisions),
        }

    def _view(self, crop: CropRecord, decision: ReviewDecision | None) -> dict:
        score = self.scores.get(crop.crop_id)
        return {
            "id": crop.crop_id,
            "emotion": crop.emotion,
            "prob": crop.prob,
            "box": crop.box,
            "source": crop.source_path,
            "decision": asdict(decision) if decision else None,
            "effective_emotion": self._effective_emotion(crop, decision),
            # the judge's guess, to accept with one key; only a decision is ever recorded
            "hint": {"emotion": score.guess, "prob": score.guess_prob} if score else None,
        }

    def _effective_emotion(self, crop: CropRecord, decision: ReviewDecision | None) -> str | None:
        """The emotion the review stage files the crop under; None where it drops the crop."""
        if decision is None:
            return None if self.cfg.unreviewed == "drop" else crop.emotion
        return {"keep": crop.emotion, "drop": None, "relabel": decision.label}[decision.action]

    def _progress(self, decisions: dict[str, ReviewDecision]) -> dict:
        by_emotion = {emotion: {"reviewed": 0, "total": 0} for emotion in EMOTIONS}
        for crop in self.crops.values():
            by_emotion[crop.emotion]["total"] += 1
            by_emotion[crop.emotion]["reviewed"] += crop.crop_id in decisions
        return {
            "reviewed": sum(counts["reviewed"] for counts in by_emotion.values()),
            "total": len(self.crops),
            "by_emotion": by_emotion,
        }


def _page(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _json(payload: object) -> Reply:
    return json.dumps(payload).encode("utf-8"), JSON_TYPE


def _handler_for(session: ReviewSession) -> type[BaseHTTPRequestHandler]:
    class ReviewHandler(BaseHTTPRequestHandler):
        server_version = "emogan-review"
        timeout = 30  # a client that connects and sends nothing does not hold a thread forever

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply_with(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._reply_with(self._post)

        def _get(self, path: str) -> Reply:
            if path in PAGES:
                name, content_type = PAGES[path]
                return _page(name), content_type
            if path == "/api/state":
                return _json(session.state())
            kind, _, crop_id = path.removeprefix("/").partition("/")
            if kind == "crop":
                return session.crop_png(unquote(crop_id)), "image/png"
            if kind == "photo":
                return session.photo_jpeg(unquote(crop_id)), "image/jpeg"
            raise HttpError(HTTPStatus.NOT_FOUND, f"no page {path}")

        def _post(self, path: str) -> Reply:
            actions = {"/api/decision": session.decide, "/api/undo": session.undo}
            if path not in actions:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no API {path}")
            return _json(actions[path](self._json_body()))

        def _check_host(self) -> None:
            # DNS rebinding: a web page on evil.example can re-point its name at 127.0.0.1 and
            # then read and write here; its requests still carry Host: evil.example.
            bound = str(self.server.server_address[0])
            if bound not in LOOPBACK_NAMES:
                return  # bound to the network on purpose; any name may reach it
            host = urlsplit(f"//{self.headers.get('Host', '')}").hostname
            if host not in LOOPBACK_NAMES:
                raise HttpError(HTTPStatus.FORBIDDEN, f"host {host!r} is not this machine")

        def _json_body(self) -> dict:
            # Requiring a JSON content type also stops other web sites from posting here: a
            # cross-site form cannot send one without a CORS preflight, which this server refuses.
            if self.headers.get_content_type() != JSON_TYPE:
                raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send {JSON_TYPE}")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                raise HttpError(HTTPStatus.BAD_REQUEST, "request body is not JSON") from None
            if not isinstance(body, dict):
                raise HttpError(HTTPStatus.BAD_REQUEST, "request body is not a JSON object")
            return body

        def _reply_with(self, route: Callable[[str], Reply]) -> None:
            try:
                self._check_host()
                body, content_type = route(urlsplit(self.path).path)
                status = HTTPStatus.OK
            except EmoganError as error:  # a refusal, or a broken decisions file, a bad photo
                status = getattr(error, "status", HTTPStatus.INTERNAL_SERVER_ERROR)
                body, content_type = _json({"error": str(error)})
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # the tab was closed mid-answer
                self.wfile.write(body)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if isinstance(code, int) and code >= HTTPStatus.BAD_REQUEST:
                super().log_request(code, size)

    return ReviewHandler


class ReviewServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], session: ReviewSession) -> None:
        self.session = session
        super().__init__(address, _handler_for(session))

    def server_close(self) -> None:
        super().server_close()
        self.session.close()


def _default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry, as in some containers
        return "unknown"


def create_server(
    cfg: ReviewConfig,
    crops_dir: Path,
    raw_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    reviewer: str | None = None,
    scores_path: Path | None = None,
) -> ReviewServer:
    """A bound, not yet serving, review server (port 0: any free port)."""
    session = ReviewSession(cfg, crops_dir, raw_dir, reviewer or _default_reviewer(), scores_path)
    try:
        return ReviewServer((host, port), session)
    except OSError as error:
        raise EmoganError(f"review tool: cannot listen on {host}:{port} ({error})") from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c() -> Iterator[None]:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def serve_review(
    cfg: ReviewConfig,
    crops_dir: Path,
    raw_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = True,
    reviewer: str | None = None,
    scores_path: Path | None = None,
) -> None:
    """Serve the review page until Ctrl-C or SIGTERM; decisions go to `cfg.decisions` at once."""
    server = create_server(
        cfg, crops_dir, raw_dir, host=host, port=port, reviewer=reviewer, scores_path=scores_path
    )
    url = f"http://{host}:{server.server_port}/"
    print(f"review tool: {url}", flush=True)
    unavailable = server.session.suspect_unavailable
    if unavailable:
        print(f"review tool: no suspect order: {unavailable}", file=sys.stderr, flush=True)
    if open_browser:
        webbrowser.open(url)
    with _sigterm_stops_like_ctrl_c():
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("review tool: stopped", flush=True)
        finally:
            server.server_close()
