"""MLflow "models from code" entry point of the registered anomaly-detection model (see ``anomaly_model.py``)."""

from mlflow.models import set_model

from incad.tracking.anomaly_model import AnomalyDetectionModel

set_model(AnomalyDetectionModel())
