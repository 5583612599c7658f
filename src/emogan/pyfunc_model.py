"""The code file of the generator's MLflow python_function model ("models from code"): MLflow
stores this file with the model and runs it on loading, rather than unpickling an object."""

from mlflow.models import set_model

from emogan.serving import FaceTranslator

set_model(FaceTranslator())
