"""The offline sample world: a deterministic mini tree of life, source payloads in each source's real format,
lineage-following images, planted duplicates and leaks, an evaluation set, a replay set, and a loopback
server at the real API paths. Stage code never special-cases it: only URLs and paths differ."""

from sample_world.build import SampleWorld, build_sample_world
from sample_world.server import serve_sample_world

__all__ = ["SampleWorld", "build_sample_world", "serve_sample_world"]
