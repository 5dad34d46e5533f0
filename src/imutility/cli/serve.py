"""``serve``: the predictor over HTTP (docs/serve.md)."""

from __future__ import annotations

from dataclasses import MISSING, fields

import click

from imutility.cli.common import (
    cli,
    device_option,
    library_call,
    load_predictor,
    model_option,
    models_option,
    precision_option,
    runtime_option,
)
from imutility.serve import ServeConfig

#: ServeConfig's own defaults: shown and used here, never a second copy
_D = {f.name: f.default for f in fields(ServeConfig) if f.default is not MISSING}


@cli.command(short_help="Serve a predictor over HTTP.")
@model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put it behind your proxy).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@runtime_option()
@device_option
@precision_option()
@click.option("--max-batch", type=click.IntRange(min=1), default=_D["max_batch"], show_default=True,
              help="Images per network call, gathered across concurrent requests.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=_D["max_wait_ms"], show_default=True,
              help="Extra wait for a fuller batch (0: batch whatever queued while the network was busy).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=_D["max_body_bytes"] / 2**20,
              show_default=True, help="Requests with a larger body are answered 413.")
@click.option("--max-images", type=click.IntRange(min=1), default=_D["max_images"], show_default=True,
              help="Images per request (multipart).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=_D["max_pixels"], show_default=True,
              help="Refuse (422) images with more pixels, before decoding.")
@click.option("--compress-pixels", type=click.IntRange(min=1), default=None,
              help="Decoded pixels all /compress searches may hold at once (about 17 bytes each); a request waits "
                   "for its share, a larger image is 413 [default: --max-pixels].")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=_D["request_timeout_s"],
              show_default=True, help="Seconds a request may take to arrive whole (headers and body); then 408.")
@click.option("--keep-alive", type=click.FloatRange(min=0, min_open=True), default=_D["keep_alive_s"],
              show_default=True, help="Seconds an idle keep-alive connection stays open.")
@click.option("--max-connections", type=click.IntRange(min=1), default=_D["max_connections"], show_default=True,
              help="Open connections at most; more are answered 503 and closed at once.")
@models_option
def serve(model, host, port, runtime, device, precision, max_batch, max_wait_ms, max_body_mb, max_images, max_pixels,
          compress_pixels, request_timeout, keep_alive, max_connections, models) -> None:
    """Serve the predictor over HTTP: POST /predict, POST /compress, GET /health, GET /model (docs/serve.md)."""
    from imutility.serve import serve as run_server

    pred = load_predictor(model, runtime, device, models, precision)
    config = library_call(ServeConfig, max_body_bytes=int(max_body_mb * 2**20), max_images=max_images,
                          max_batch=max_batch, max_wait_ms=max_wait_ms, max_pixels=max_pixels,
                          compress_pixels=compress_pixels, request_timeout_s=request_timeout,
                          keep_alive_s=keep_alive, max_connections=max_connections)
    library_call(run_server, pred, host, port, config)
