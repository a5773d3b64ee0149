"""The component registry is built once, whole, even when several jobs load models at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_registry_built_from_many_threads_at_once_is_complete():
    # A fresh interpreter, so transformers' lazy module is still unresolved when the threads start.
    code = textwrap.dedent("""
        import threading
        from worker.pipelines import components
        sizes, barrier = [], threading.Barrier(4)
        def build():
            barrier.wait()
            sizes.append(len(components.component_registry()))
        threads = [threading.Thread(target=build) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        for name in ("CLIPTextModel", "T5EncoderModel", "CLIPTokenizer", "FluxTransformer2DModel"):
            assert name in components.component_registry(), name
        print(sorted(set(sizes)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(eval(out.stdout.strip())) == 1, out.stdout  # every thread saw the same, whole registry
