"""Folder jobs: ``distort``, ``compress`` and ``filter`` over the images of a folder, around one shared
folder-job module (:mod:`imutility.jobs.folder`: listing, skipping, reading, resuming, reports)."""
