"""A smart camera on edgekit: frames in, early-exit inference, a live web page out.

    python -m apps.smart_camera build/fmnist.edgepkg --source test://fashion-mnist

From Python (the pieces the split demo reuses)::

    from apps.smart_camera import Camera, CameraConfig, Capture, WebView, open_source
    model = edgekit.load(pkg, policy="bandit")
    cam = Camera(model, Capture(open_source("clip.mp4")).start())
    with WebView(cam, port=8080):
        cam.run()
"""

from ._app import Camera, CameraConfig, Result
from ._capture import Capture, Frame
from ._cli import main
from ._frames import Preprocessor
from ._sources import Source, SourceError, SourceLost, open_source
from ._web import View, WebError, WebView

__all__ = [
    "Camera",
    "CameraConfig",
    "Capture",
    "Frame",
    "Preprocessor",
    "Result",
    "Source",
    "SourceError",
    "SourceLost",
    "View",
    "WebError",
    "WebView",
    "main",
    "open_source",
]
