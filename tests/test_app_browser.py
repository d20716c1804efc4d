"""The web page in a real browser (``make test-browser``: Debian's chromium and chromium-driver): Executors/app.py in a
subprocess, a NIfTI file uploaded through the page, its latents read back from the page's TSV link and compared
with ``embed()`` on the same file; a bad file shows the CLI's one-line error; the page requests nothing from a host
other than this machine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urljoin, urlparse

import numpy as np
import pandas as pd
import pytest

from Engineering import api
from tests.conftest import REPO
from tests.test_api import diffae_run  # noqa: F401  (module fixture: a tiny trained DiffAE)
from tests.test_app import KEYS, latentcls_run, write_nifti  # noqa: F401  (latentcls_run: a module fixture)

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LOCAL = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(diffae_run, latentcls_run, tmp_path_factory):  # noqa: F811
    """The app on a free localhost port with a manipulation direction (analytics off by the app itself, no network
    needed); its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(log.parent / "gradio")}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "Executors" / "app.py"),
                "--model",
                str(diffae_run),
                "--direction",
                str(latentcls_run),
                "--target",
                "up",
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the app did not answer in 2 minutes: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()  # run_cli: SIGTERM -> exit 143 after closing the server
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == 143, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail(
            "chromium and chromedriver are needed: make test-browser installs them (apt-get install -y "
            "chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _upload(driver, url: str, path) -> str:
    """Open the page, send a file to its upload input, wait for the status line to change; the status."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 120, poll_frequency=0.25)
    field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
    field.send_keys(str(path))

    def status(d):
        text = d.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")
        return text if text and (text.startswith("error: ") or "latent vector(s)" in text) else None

    return wait.until(status)


def _requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            u = urlparse(msg["params"].get("request", {}).get("url") or msg["params"].get("url", ""))
            if u.scheme in ("http", "https", "ws", "wss"):  # not chrome://, data: or blob: (no network)
                hosts.add(u.hostname)
    return hosts


def test_upload_a_nifti_file_and_read_its_latents_from_the_page(
    page,
    browser,
    diffae_run,  # noqa: F811  (the imported module fixture)
    tiny_demo,
    tmp_path,
):
    import h5py
    from selenium.webdriver.common.by import By

    with h5py.File(tiny_demo / "data.h5") as h5:
        x = h5["1000001/20208/2/primary_cine_0"][()]
    nii = tmp_path / "S9_20208_2_cine.nii.gz"
    write_nifti(x, nii)
    status = _upload(browser, page, nii)
    assert "latent vector(s)" in status and "S9/20208/2/primary" in status, status

    # the latents as the page offers them: its TSV download link
    link = browser.find_element(By.CSS_SELECTOR, "#latents-tsv a[href]").get_attribute("href")
    assert urlparse(link).hostname == "127.0.0.1"
    with urllib.request.urlopen(urljoin(page, link), timeout=30) as r:
        (tmp_path / "page.tsv").write_bytes(r.read())
    table = pd.read_csv(tmp_path / "page.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})
    grid = api.load(diffae_run).embed(nii)
    rows = table.sort_values(["c", "t", "s"])
    want = np.stack([grid[r.c, r.t, 0] for r in rows.itertuples()])
    got = rows[[c for c in table.columns if c.startswith("Z")]].to_numpy()
    assert got.shape == want.shape == (x.shape[1], 8)
    delta = float(np.abs(got - want).max())
    print(f"max |dz| page vs embed(): {delta:.3g}")
    assert delta < 1e-5
    # the table on the page shows the same rows
    grid_el = browser.find_element(By.CSS_SELECTOR, "#latents [role=grid]")
    assert int(grid_el.get_attribute("aria-rowcount")) == len(table) + 1  # the header and one row per latent
    assert f"{table.iloc[0]['Z0']:.6f}"[:8] in browser.find_element(By.CSS_SELECTOR, "#latents").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#inputs img")) == x.shape[1]  # the preprocessed frames

    # the manipulation slider: a click a quarter of the way from its centre (-3..3 in steps of 0.5) is +1.5
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    track = browser.find_element(By.CSS_SELECTOR, "#scale input[type=range]")
    ActionChains(browser).move_to_element_with_offset(track, track.size["width"] // 4, 0).click().perform()
    status = WebDriverWait(browser, 120, poll_frequency=0.25).until(
        lambda d: (
            (v := d.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")).startswith(
                ("up ", "error: ")
            )
            and v
        )
    )
    assert status == "up (increasing): scale +1.5", status
    assert len(browser.find_elements(By.CSS_SELECTOR, "#manipulated img")) == x.shape[1]

    hosts = _requested_hosts(browser)
    assert hosts and hosts <= LOCAL, f"the page requested other hosts: {hosts - LOCAL}"


def test_a_bad_file_shows_the_clis_one_line_error(page, browser, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a NIfTI image")
    status = _upload(browser, page, bad)
    assert status.startswith("error: ") and "broken.nii.gz: cannot read NIfTI" in status and "\n" not in status
    hosts = _requested_hosts(browser)
    assert hosts <= LOCAL, f"the page requested other hosts: {hosts - LOCAL}"
