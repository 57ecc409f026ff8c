"""``python -m embedpipe.serve.llama_cpp_launch ARGS…``: llama-cpp-python's OpenAI server
(``python -m llama_cpp.server ARGS…``), its model loaded as the ``bench runtime`` peer loads
it: without llama.cpp's extra buffer types on AMX hosts, where its AMX matmul crashes the
server at the first request (``runtime.bench_peers.extra_buffer_types``)."""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    import llama_cpp

    from embedpipe.runtime.bench_peers import extra_buffer_types

    with extra_buffer_types(llama_cpp) as note:
        if note:
            print(f"llama.cpp: {note}", file=sys.stderr, flush=True)
        sys.argv[0] = "llama_cpp.server"
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
