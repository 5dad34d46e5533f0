"""Preparers that kill their worker process, for the failure-isolation tests. A module of its own with no heavy
imports: a spawned worker imports it to unpickle them, and importing a test module (torch and all) would cost
seconds per worker start."""

from __future__ import annotations

import os


class DieOn:
    """A preparer that kills its process on images of one size (a decoder crash), else delegates."""

    def __init__(self, inner, size: tuple[int, int]):
        self.inner, self.size = inner, size

    def __call__(self, img):
        if img.size == self.size:
            os._exit(13)
        return self.inner(img)


class AlwaysDies:
    def __call__(self, img):
        os._exit(13)
