"""The page of `asr serve` in a real browser: headless Chromium (Debian's, driven by Selenium
through Debian's chromium-driver, built from the same source so the versions always match)
uploads a file and shows the Transcriber's words, lights up the word at the playback time,
offers the server's SRT and VTT, records from Chromium's fake microphone (a WAV file played
as microphone input) and transcribes that, and captions the microphone live over the WebSocket
(partial text while it still records, then the final words).

scripts/test.sh installs chromium and chromium-driver when they are missing; without them this
test skips, except under CI (CI=true), where it fails. Screenshots are saved in the test's tmp
folder, and also in $ASR_SCREENSHOTS when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import soundfile
import torch
import torchaudio

pytest.importorskip("fastapi", reason="asr serve needs the serve extra: pip install 'asr[serve]'")
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from serving_helpers import KEY, MODEL, SENTENCES, serve_process, speak, speech_files
from test_streaming import calibrated_streaming_bundle

import asr
from asr.inference.formats import format_result
from asr.inference.transcribe import Result, Word

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speech")
    found = speech_files(folder)
    # The fake microphone says three sentences (then starts again).
    found["mic"] = folder / "mic.wav"
    soundfile.write(found["mic"], speak(SENTENCES[2:5]), 22050, subtype="PCM_16")
    return found


@pytest.fixture(scope="module")
def expected(files):
    return asr.load_model(MODEL).transcribe(files["short"])[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", MODEL, "--api-key", KEY, "--threads", "2"]
    with serve_process(tmp_path_factory.mktemp("server"), args) as url:
        yield url


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, files):
    """A server of a model that can stream: a causal one with random weights, its head
    calibrated on the microphone's speech (the shipped model cannot stream)."""
    folder = tmp_path_factory.mktemp("live")
    wave, rate = soundfile.read(files["mic"], dtype="float32")
    wave16 = torchaudio.functional.resample(torch.from_numpy(wave), rate, 16000)
    bundle = calibrated_streaming_bundle(folder / "causal.pt", wave16[None])
    args = ["--model", f"live={bundle}", "--api-key", KEY, "--threads", "2", "--chunk-ms", "320"]
    with serve_process(folder, args) as url:
        yield url


@pytest.fixture(scope="module")
def browser(files):
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (scripts/test.sh installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,760", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={files['mic']}",
                "--autoplay-policy=no-user-gesture-required"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_state(browser, *states: str, timeout: float = 60) -> str:
    """The page's `data-state` once it is one of `states`."""
    WebDriverWait(browser, timeout).until(lambda d: page_state(d) in states)
    return page_state(browser)


def page_state(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def open_page(browser, url: str, model: str = MODEL) -> None:
    """Load the page; it cannot list the models until it has the key, then it can."""
    browser.get(url)
    assert wait_for_state(browser, "ready", "error") == "error"
    assert "this server needs an API key" in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "key").send_keys(KEY + Keys.TAB)
    wait_for_state(browser, "ready")
    assert browser.find_element(By.ID, "model").get_attribute("value") == model


def shown_words(browser) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#transcript .word")]


def screenshot(browser, folder: Path, name: str) -> Path:
    path = folder / name
    assert browser.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    if os.environ.get("ASR_SCREENSHOTS"):
        Path(os.environ["ASR_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["ASR_SCREENSHOTS"]) / name)
    return path


def test_the_page_transcribes_an_upload_and_follows_playback(browser, server, files, expected,
                                                             tmp_path):  # fmt: skip
    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(files["short"]))
    assert wait_for_state(browser, "done", "error") == "done", browser.find_element(
        By.ID, "status"
    ).text
    assert shown_words(browser) == [w.word for w in expected.words]

    # Seeking the player lights up the word heard at that time (the screenshot shows the last).
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('player').readyState") >= 1
    )
    for index in (0, len(expected.words) - 1, len(expected.words) // 2):
        word = expected.words[index]
        browser.execute_script("document.getElementById('player').currentTime = arguments[0]",
                               (word.start + word.end) / 2)  # fmt: skip
        WebDriverWait(browser, 30).until(lambda d, index=index: lit_word(d) == index)
    screenshot(browser, tmp_path, "page-upload.png")

    # The downloads are the server's subtitles of the words the page was given.
    rounded = Result(id="page", path=None, words=[
        Word(w.word, round(w.start, 3), round(w.end, 3), round(w.confidence, 3))
        for w in expected.words
    ])  # fmt: skip
    for fmt in ("srt", "vtt"):
        link = browser.find_element(By.ID, fmt)
        assert link.get_attribute("download") == f"short.{fmt}"
        assert fetch_text(browser, link.get_attribute("href")) == format_result(rounded, fmt)


def lit_word(browser) -> int:
    return browser.execute_script(
        "return [...document.querySelectorAll('#transcript .word')]"
        ".findIndex((s) => s.classList.contains('now'))"
    )


def fetch_text(browser, url: str) -> str:
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => r.text()).then(done, (e) => done(String(e)));",
        url,
    )


def recorded_seconds(browser) -> float:
    """Seconds of microphone audio the page has captured so far, as it reports them."""
    return float(browser.find_element(By.TAG_NAME, "body").get_attribute("data-recorded") or 0)


def test_the_page_records_the_microphone_and_transcribes_it(browser, server, files, tmp_path):
    open_page(browser, server)
    record = browser.find_element(By.ID, "record")
    record.click()
    wait_for_state(browser, "recording", timeout=60)
    # Stop once the page holds 4 s of audio (the microphone's clock, not the test's).
    WebDriverWait(browser, 120).until(lambda d: recorded_seconds(d) >= 4)
    record.click()
    assert wait_for_state(browser, "done", "error", timeout=120) == "done", browser.find_element(
        By.ID, "status"
    ).text
    body = browser.find_element(By.TAG_NAME, "body")
    sent = float(body.get_attribute("data-sent"))  # the WAV's length, from its sample count
    assert sent >= 4  # everything captured until the click, and what came before Stop took
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("recording.wav: ")
    duration = re.search(r" in ([0-9.]+) s of audio\.$", status)  # the server's, to 0.1 s
    assert duration and float(duration[1]) == pytest.approx(sent, abs=0.051), status
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('player').readyState") >= 1
    )
    seconds = browser.execute_script("return document.getElementById('player').duration")
    assert seconds == pytest.approx(sent, abs=1e-3)  # the player plays what was sent
    heard = shown_words(browser)
    said = {w.word for w in asr.load_model(MODEL).transcribe(files["mic"])[0].words}
    # The fake microphone plays the file from its start; the model hears many of its words.
    assert len(heard) >= 4 and len(set(heard) & said) >= 3, (heard, said)
    screenshot(browser, tmp_path, "page-microphone.png")


def test_the_page_shows_the_servers_message_for_a_file_that_is_not_audio(browser, server,
                                                                        tmp_path):  # fmt: skip
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio at all\n" * 50)
    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(str(notes))
    assert wait_for_state(browser, "done", "error") == "error"
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("notes.txt: cannot read audio file 'notes.txt': not a readable audio")
    assert shown_words(browser) == []


def caption(browser) -> str:
    """The live caption the page shows (the partial text so far)."""
    found = browser.find_elements(By.CSS_SELECTOR, "#transcript .partial")
    return found[0].text if found else ""


def test_the_page_captions_the_microphone_live(browser, live_server, tmp_path):
    open_page(browser, live_server, model="live")
    live = browser.find_element(By.ID, "live")
    live.click()
    wait_for_state(browser, "live", timeout=60)
    # Partial text appears while the page is still recording (only Stop ends the recording).
    WebDriverWait(browser, 120).until(lambda d: caption(d) != "" or page_state(d) != "live")
    assert page_state(browser) == "live", browser.find_element(By.ID, "status").text
    seen, seen_at = caption(browser), recorded_seconds(browser)
    screenshot(browser, tmp_path, "page-live.png")
    WebDriverWait(browser, 120).until(lambda d: recorded_seconds(d) >= seen_at + 1.5)
    live.click()
    assert wait_for_state(browser, "done", "error", timeout=120) == "done", browser.find_element(
        By.ID, "status"
    ).text
    # The final words extend the captions seen (greedy decoding: the same hypothesis), and the
    # server heard all the audio the page captured.
    final = " ".join(shown_words(browser))
    assert final.startswith(seen) and len(final) > len(seen), (seen, final)
    sent = float(browser.find_element(By.TAG_NAME, "body").get_attribute("data-sent"))
    assert sent > seen_at
    status = browser.find_element(By.ID, "status").text
    duration = re.search(r" in ([0-9.]+) s of audio\.$", status)
    assert status.startswith("live: ") and duration, status
    assert float(duration[1]) == pytest.approx(sent, abs=0.051), status
    assert browser.find_element(By.ID, "srt").get_attribute("download") == "live.srt"
