"""The runtime must import and embed where torch, transformers and onnx cannot be imported."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from runtime import Embedder

BLOCKED = ["torch", "transformers", "sentence_transformers", "onnx", "optimum", "huggingface_hub"]


def test_runtime_works_without_torch_or_transformers(tiny_artifact):
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Block())
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("blocker failed")
        from runtime import Embedder
        v = Embedder({str(tiny_artifact)!r}).encode(["hello world", "second text"], prompt_name="query")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({{"vectors": v.tolist(), "loaded": loaded}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    expected = Embedder(tiny_artifact).encode(["hello world", "second text"], prompt_name="query")
    np.testing.assert_allclose(np.asarray(result["vectors"], dtype=np.float32), expected, atol=1e-6)
