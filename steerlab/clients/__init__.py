"""Clients of text-generating services, shared by everything that asks one for replies.

- :mod:`steerlab.clients.anthropic`: the one Anthropic Messages-API client (text, Message Batches
  with re-attach, retries, concurrency, the API-version workaround for sampling parameters, the
  API key, cost estimates);
- :mod:`steerlab.clients.cache`: the on-disk reply cache (SQLite) used by the judge and by the SDF
  add-on's document generation.

This package imports nothing from ``steerlab.harness``, ``steerlab.backends`` or the command line:
they build on it, not the other way round.
"""
