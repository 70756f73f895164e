"""IQS, the "ranking" half of CaR: a COMET-style quality estimator over a Hugging Face
encoder (model.py), trained on expert revisions (train.py), loaded from our own folders
(store.py) or CaR/COMET checkpoints (checkpoint.py), exported to ONNX Runtime (onnx.py),
and run over records (score.py)."""

from car_engine.iqs.score import IQSScorer, score_iqs

__all__ = ["IQSScorer", "score_iqs"]
