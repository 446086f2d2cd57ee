"""Generation backends behind one small interface (:class:`steerlab.backends.base.Backend`).

A backend takes a list of requests (messages, sampling parameters, an optional steering
setting) and returns one result per request, in order. The HF backend is here; the vLLM
backend of a later issue plugs in without touching callers.
"""

from steerlab.backends.base import Backend, Request, Result, Sampling

__all__ = ["Backend", "Request", "Result", "Sampling"]
