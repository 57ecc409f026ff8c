"""`embedpipe serve`: an OpenAI-compatible embedding and search server.

Starlette on uvicorn; every model is served through an `AsyncEmbedder` (micro-batching over one
worker thread), repeated texts come from the two-level embedding cache, `/metrics` speaks
Prometheus. Modules: `config` (settings), `errors` (OpenAI-style error bodies), `schemas`
(request validation), `catalog` (loaded models and indexes), `embeddings` / `search` (the two
services), `metrics`, `app` (routes, auth, limits, access log), `runner` (uvicorn, graceful
shutdown), `bench` (`embedpipe bench serve`).
"""
