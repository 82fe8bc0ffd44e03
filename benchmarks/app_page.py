"""interlcm-app's response time as a user sees it: click Restore in a browser -> the result on the page.

    python -m interlcm.benchmarks.app_page --preset tiny --runs 5

Starts the app in this process (`--preset` random weights, or `--weights DIR`; dlib detector; torch at
`--threads`), drives Debian's headless Chromium (apt-get install chromium chromium-driver) with Selenium,
uploads the bundled 1-face demo photo (interlcm/assets/photo.jpg) once and clicks Restore `--runs`
times after one warm-up click (the first request opens the detector). Each time is from the click to
the page showing the new download link, with nothing else queued: upload is excluded, the queue,
the restore (detect, align, restore, paste back at 2x), the PNG encode, Gradio's file serving and the
page update are included. The app's own stage seconds (from the page's report) are printed beside it.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click

_STATE = """const a = document.querySelector('#download a');
const busy = [...document.querySelectorAll('[data-testid=status-tracker]')].some(t => !t.classList.contains('hide'));
return [a ? a.href : null, busy];"""


@click.command()
@click.option("--preset", default="tiny", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), help="A weights folder instead of random preset weights.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the numbers here.")
def main(preset: str, weights: Path | None, threads: int, runs: int, json_out: Path | None) -> None:
    import torch
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from interlcm.engines.app import LocalEngine, PageDefaults, build_page, launch
    from interlcm.engines.backend import BackendOptions
    from interlcm.engines.loaded import LoadedRestorer
    from interlcm.imageio import demo_photo_path

    torch.set_num_threads(threads)
    loaded = LoadedRestorer(BackendOptions("torch", weights=weights, preset=None if weights else preset))
    workdir = Path(tempfile.mkdtemp(prefix="interlcm-app-bench-"))
    page = build_page(LocalEngine(loaded), workdir, defaults=PageDefaults(detector="dlib"))
    url = launch(page, workdir, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}", "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 300, poll_frequency=0.02)
    try:
        driver.get(url)
        wait.until(lambda d: d.find_elements("css selector", "#photo input[type=file]"))
        driver.find_element("css selector", "#photo input[type=file]").send_keys(str(demo_photo_path()))
        wait.until(lambda d: d.find_elements("css selector", "#photo img"))
        seconds, reports = [], []
        for i in range(runs + 1):
            before = driver.execute_script(_STATE)[0]
            start = time.perf_counter()
            driver.find_element("css selector", "#restore").click()
            wait.until(lambda d: (lambda s: s[0] != before and not s[1])(d.execute_script(_STATE)))  # noqa: B023
            if i:  # the first click is the warm-up
                seconds.append(time.perf_counter() - start)
                reports.append(driver.find_element("css selector", "#report").text.splitlines()[1])
            driver.find_element("css selector", "#seed input").send_keys("1", Keys.TAB)  # another seed: another file
    finally:
        driver.quit()
        page.close()
        loaded.close()
    result = {"what": "click -> result on the page, 1-face demo photo, whole photo at 2x",
              "backend": loaded.description, "threads": threads, "runs": runs, "machine": platform.processor(),
              "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
              "seconds": seconds, "app_stages": reports}
    click.echo(f"{loaded.description}\nclick -> result, {runs} runs: median {result['median_s']:.2f} s, "
               f"min {result['min_s']:.2f}, max {result['max_s']:.2f}")
    for line in reports:
        click.echo(f"  app: {line}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
