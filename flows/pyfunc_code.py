"""The code MLflow logs with every registered model version and runs when it loads one ("models from code",
flows/registry.py): it names the model object. Everything else is in flows/pyfunc_model.py."""
from mlflow.models import set_model

from flows.pyfunc_model import TextToImageModel

set_model(TextToImageModel())
