"""interlcm-app in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

The app runs in this process on random tiny weights with the dlib detector, bound to 127.0.0.1 on a
free port; each test loads the page afresh, uploads through the page's file input and reads the result
the way a user gets it: the download link. A screenshot of the page with a result is saved to
outputs/app-screenshot.png (docs/app.png is a copy of it, for the README).
"""

from __future__ import annotations

import io
import shutil
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from interlcm.testing import group_photo

pytest.importorskip("gradio", reason="the app extra is not installed (make install installs it)")
pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "outputs" / "app-screenshot.png"
HEADS = ((0.22, 0.45, 190, 0), (0.76, 0.45, 170, 6))  # two faces dlib finds, apart
SIZE = (480, 240)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1500")



@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The page on tiny random weights (dlib first), on a free port of 127.0.0.1; closed after the module."""
    from interlcm.engines.app import LocalEngine, PageDefaults, build_page, launch
    from interlcm.engines.backend import BackendOptions
    from interlcm.engines.loaded import LoadedRestorer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("app")
    loaded = LoadedRestorer(BackendOptions("torch", preset="tiny"))
    page = build_page(LocalEngine(loaded), workdir, defaults=PageDefaults(detector="dlib"))
    url = launch(page, workdir, port=port, quiet=True)
    assert url.startswith(f"http://127.0.0.1:{port}")
    yield url
    page.close()
    loaded.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    photo = group_photo(SIZE, HEADS)
    Image.fromarray(photo).save(root / "two.png")
    (root / "notes.png").write_text("a text file, renamed .png\n")
    return root, photo


class Page:
    """The app's page in the browser: load, upload, set a number, restore and wait."""

    STATE = """
        const link = document.querySelector('#download a');
        const busy = [...document.querySelectorAll('[data-testid=status-tracker]')]
            .some(t => !t.classList.contains('hide'));
        const message = document.querySelector('#message [data-testid=markdown]');
        return [link ? link.href : null, message ? message.innerText.trim() : '', busy];"""

    def __init__(self, driver, url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, 60, poll_frequency=0.05)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements("css selector", "#photo input[type=file]"))

    def upload(self, path: Path) -> None:
        self.driver.find_element("css selector", "#photo input[type=file]").send_keys(str(path))
        self.wait.until(lambda d: d.execute_script(  # the upload reached the server and the preview is there
            "return document.querySelector('#photo img') !== null || document.querySelector('#photo .upload-text') === null"))

    def set_number(self, elem_id: str, value: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.driver.find_element("css selector", f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")  # a modifier stays down until the end of its send_keys call
        box.send_keys(value, Keys.TAB)
        self.wait.until(lambda d: float(d.find_element("css selector", f"#{elem_id} input[type=range]")
                                        .get_attribute("value")) == float(value))

    def state(self) -> tuple[str | None, str, bool]:
        return tuple(self.driver.execute_script(self.STATE))

    def restore(self, button: str = "restore") -> tuple[str | None, str, float]:
        """Click Restore and wait for the answer: (download URL or None, the message line, seconds)."""
        before, seen_busy = self.state(), False

        def done(_) -> bool:
            nonlocal seen_busy
            link, message, busy = self.state()
            seen_busy |= busy
            return not busy and (seen_busy or (link, message) != before[:2])

        start = time.perf_counter()
        self.driver.find_element("css selector", f"#{button}").click()
        self.wait.until(done)
        link, message, _ = self.state()
        return link, message, time.perf_counter() - start

    def text(self, elem_id: str) -> str:
        return self.driver.find_element("css selector", f"#{elem_id}").text


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _near_faces(photo: np.ndarray, upscale: int) -> np.ndarray:
    """(sH, sW) bool: canvas pixels the pasted crops may touch (dlib on the detection view, as the engine)."""
    from interlcm.engines.photo import detection_view
    from interlcm.faces.align import align_face
    from interlcm.faces.dlib_detector import DlibDetector
    from interlcm.faces.paste import canvas_inverse

    h, w = photo.shape[:2]
    view, scale = detection_view(photo)
    near = np.zeros((h * upscale, w * upscale), np.uint8)
    for face in DlibDetector().detect([view])[0]:
        aligned = align_face(photo, face.landmarks / scale, "dlib5", 64)
        square = np.array([[0, 0, 1], [64, 0, 1], [64, 64, 1], [0, 64, 1]], np.float64) @ canvas_inverse(aligned.inverse, upscale).T
        cv2.fillConvexPoly(near, np.round(square).astype(np.int32), 1)
    return cv2.dilate(near, np.ones((5, 5), np.uint8)) > 0


def test_a_two_face_photo_is_restored_inside_the_faces_only(app, browser, photos, tmp_path):
    root, photo = photos
    page = Page(browser, app)
    assert "Random weights" in page.text("banner")
    page.upload(root / "two.png")
    link, message, seconds = page.restore()
    assert link and message == "", message
    restored = np.asarray(Image.open(io.BytesIO(_fetch(link))))
    h, w = photo.shape[:2]
    assert restored.shape == (2 * h, 2 * w, 3)
    plain = cv2.resize(photo, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    near = _near_faces(photo, 2)
    assert 0.05 < near.mean() < 0.5
    assert np.array_equal(restored[~near], plain[~near])  # outside the faces: the upscaled input, exactly
    for cx, cy, _, _ in HEADS:  # inside: changed (random weights)
        y, x = int(cy * 2 * h), int(cx * 2 * w)
        assert np.abs(restored[y - 8 : y + 8, x - 8 : x + 8].astype(int) - plain[y - 8 : y + 8, x - 8 : x + 8]).mean() > 5

    from interlcm.engines.cli import main  # the page's download is the CLI's file for the same options

    result = CliRunner().invoke(main, ["restore", str(root / "two.png"), "--preset", "tiny", "--detector", "dlib",
                                       "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert _fetch(link) == (tmp_path / "cli" / "two.png").read_bytes()

    assert len(browser.find_elements("css selector", "#faces img")) >= 4  # 2 faces, before and after
    report = page.text("report")
    assert "torch" in report and "detect" in report and "restore" in report and "paste" in report
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    print(f"\n1 restore of a 2-face {w}x{h} photo on tiny: {seconds:.2f} s from the click to the result")


def test_strength_0_gives_the_input(app, browser, photos):
    root, photo = photos
    page = Page(browser, app)
    page.upload(root / "two.png")
    page.set_number("strength", "0")
    page.set_number("upscale", "1")
    link, message, _ = page.restore()
    assert link and message == "", message
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_fetch(link)))), photo)


def test_a_text_file_renamed_png_gets_one_line_and_the_app_goes_on(app, browser, photos):
    root, _ = photos
    page = Page(browser, app)
    page.upload(root / "notes.png")
    link, message, _ = page.restore()
    assert link is None
    assert message.startswith("⚠️ notes.png: not an image") and "\n" not in message, message
    page.upload(root / "two.png")  # the same page, the next photo: served
    link, message, _ = page.restore()
    assert link and message == "", message


def test_a_second_request_waits_in_the_queue_with_its_position(app, browser, photos):
    """Two tabs: the second request, sent while the first runs, shows its queue position, then its result."""
    root, _ = photos
    first = Page(browser, app)
    first.upload(root / "two.png")
    first.set_number("upscale", "4")  # a slower first request
    tabs = browser.window_handles
    browser.switch_to.new_window("tab")
    second = Page(browser, app)
    second.upload(root / "two.png")
    browser.switch_to.window(tabs[0])
    browser.find_element("css selector", "#restore").click()
    browser.switch_to.window(browser.window_handles[-1])
    second.driver.find_element("css selector", "#restore").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10, poll_frequency=0.05).until(  # Gradio's status tracker: "queue: 1/1 | 0.4s"
        lambda d: "queue" in d.find_element("css selector", "#download").text.lower())
    second.wait.until(lambda d: second.state()[0] is not None and not second.state()[2])
    browser.close()
    browser.switch_to.window(tabs[0])
    first.wait.until(lambda d: first.state()[0] is not None and not first.state()[2])


def test_a_short_video_is_restored_frame_by_frame(app, browser, tmp_path):
    import av

    from interlcm.testing import write_clip

    one = group_photo((160, 120), ((0.5, 0.5, 100, 0),))  # one face a frame: two frames, two faces
    write_clip(tmp_path / "clip.mp4", [one, np.roll(one, 3, axis=1)], fps=2)
    page = Page(browser, app)
    browser.find_element("xpath", "//button[@role='tab'][normalize-space()='Video']").click()
    browser.find_element("css selector", "#video input[type=file]").send_keys(str(tmp_path / "clip.mp4"))
    page.wait.until(lambda d: d.find_elements("css selector", "#video video"))
    link, message, seconds = page.restore("restore_video")
    print(f"\nvideo restore {seconds:.2f} s")
    assert link and link.endswith("clip.mp4") and message == "", message
    (tmp_path / "out.mp4").write_bytes(_fetch(link))
    with av.open(str(tmp_path / "out.mp4")) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
        assert video.streams.audio  # the sound is kept
    assert len(frames) == 2 and frames[0].shape == (240, 320, 3)
    plain = cv2.resize(one, (320, 240), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(frames[0][112:128, 152:168] - plain[112:128, 152:168]).mean() > 20  # the face was restored
    assert np.abs(frames[0][:20] - plain[:20]).mean() < 4  # the rest: the upscaled frame (up to the encoder)
    assert browser.find_element("css selector", "#video_result video").is_displayed()
