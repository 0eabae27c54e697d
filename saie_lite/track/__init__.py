"""Trackers: the runs, evaluations and ablations also sent to TensorBoard, Weights &
Biases, MLflow or trackio (``train.report_to``). The local store stays the record; a tracker only
mirrors it, and one that fails is said in one line while the run goes on. Each tracker's
library is imported only when it is asked for."""
