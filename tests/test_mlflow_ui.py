"""The MLflow UI as a user sees it, in headless Chromium: a real tiny training and its samples
in a sqlite store, served by `mlflow server`. `make docs-screenshot` also shoots the demo's own
runs for the README."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS
from mlflow import MlflowClient
from stargan_helpers import tiny_params, write_dataset
from test_tracking import free_port, wait_until_healthy

from emogan.config import load_params
from emogan.stargan.sample import make_samples
from emogan.stargan.train import train_stargan
from emogan.stargan.trained import training_run_id
from emogan.tracking import SAMPLE_GRID, TRAINING_VIEW, training_runs_page

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("EMOGAN_SCREENSHOTS", "/tmp/emogan-mlflow"))
README_STORE = os.environ.get("EMOGAN_README_STORE")  # set by `make docs-screenshot`
README_SCREENSHOT = ROOT / "docs" / "mlflow-runs.png"


@contextmanager
def mlflow_server(store: str) -> Iterator[str]:
    """`mlflow server` over store on a free local port; yields its address."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", store]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_experiment_opens_on_its_runs_with_their_dataset_and_sample_grid(
    tmp_path: Path, chromium: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = tiny_params(store)
    data = write_dataset(tmp_path / "processed")
    model_dir = tmp_path / "stargan"
    train_stargan(
        params, data, model_dir, tmp_path / "ckpt", tmp_path / "t.json", tmp_path / "l.csv"
    )
    make_samples(params, model_dir, data, tmp_path / "samples")
    run = MlflowClient(store).get_run(training_run_id(model_dir))

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with mlflow_server(store) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        runs_page = training_runs_page(params.mlflow, tmp_path, url)  # `make mlflow-ui`'s
        assert runs_page == f"{url}/#/experiments/{run.info.experiment_id}?{TRAINING_VIEW}"
        page.goto(runs_page)
        expect(page.get_by_text(run.info.run_name).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text(data.as_posix()).first).to_be_visible()  # Dataset column
        page.screenshot(path=SCREENSHOTS / "runs.png")

        run_page = f"{url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        page.goto(f"{run_page}/artifactPath/{SAMPLE_GRID}?{TRAINING_VIEW}")
        expect(page.get_by_text(SAMPLE_GRID).first).to_be_visible(timeout=60_000)
        grid = "img[src^='blob:']"  # the artifact, fetched and shown
        expect(page.locator(grid).first).to_be_visible()
        page.wait_for_function(f'document.querySelector("{grid}").naturalWidth > 0')
        page.screenshot(path=SCREENSHOTS / "sample_grid.png")
        browser.close()


@pytest.mark.skipif(README_STORE is None, reason="`make docs-screenshot` shoots the demo's runs")
def test_the_readme_screenshot_shows_the_demo_runs(chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with mlflow_server(README_STORE) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 700})
        mlflow = load_params(ROOT / "params.yaml").mlflow.model_copy(
            update={"tracking_uri": README_STORE}
        )
        page.goto(training_runs_page(mlflow, ROOT, url))
        expect(page.get_by_text("stargan").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("data/processed").first).to_be_visible()  # Dataset column
        page.screenshot(path=README_SCREENSHOT)
        browser.close()
