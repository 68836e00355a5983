"""The inspection page in a real headless Chromium: renders, no console errors, the picker recolours it."""

from __future__ import annotations

import io
import re
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rnnlab.inspection.capture import record_activations  # noqa: E402
from rnnlab.inspection.gradflow import adding_problem  # noqa: E402
from rnnlab.inspection.report import inspect_model  # noqa: E402
from rnnlab.models import ModelConfig, SequenceModel  # noqa: E402

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium / chromedriver not found and could not be installed "
                                       "(`make test` runs `apt-get install -y chromium chromium-driver` as root)")

TEXT = ('She said "meet me (at the [old] mill)" and left.\nHe wrote "yes" (twice).\n' * 6)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield drv
    drv.quit()


def _open(driver, path):
    driver.get(path.as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _colours(driver, selector: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(s => getComputedStyle(s).backgroundColor)",
        selector)


def _screenshot_not_blank(driver) -> None:
    img = mpimg.imread(io.BytesIO(driver.get_screenshot_as_png()), format="png")[..., :3]
    assert img.shape[0] > 100 and img.std() > 0.05
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 30


@pytest.fixture(scope="module")
def text_page(tmp_path_factory):
    torch.manual_seed(0)
    chars = sorted(set(TEXT))
    stoi = {c: i for i, c in enumerate(chars)}
    model = SequenceModel(ModelConfig(cell="lstm", hidden_size=12, num_layers=2, bidirectional=True,
                                      embedding_dim=8), input_size=1, output_size=len(chars), target="seq_class",
                          vocab_size=len(chars))
    texts = [TEXT[:150], TEXT[150:300]]
    x = torch.tensor([[stoi[c] for c in s] for s in texts])
    out = tmp_path_factory.mktemp("inspect-text")
    summary = inspect_model(model, out, x=x, y=x, texts=texts, title="browser test", reference=False)
    return out / "index.html", record_activations(model, x), summary


def test_text_page_renders_and_the_picker_recolours(driver, text_page):
    path, acts, summary = text_page
    _open(driver, path)
    assert _errors(driver) == []
    _screenshot_not_blank(driver)
    n = driver.execute_script("return document.querySelectorAll('#text span.ch').length")
    assert n == 300
    assert driver.execute_script("return document.querySelector('#text').textContent") == TEXT[:300]

    # the page opens on the best unit of units.json; each span's title carries the value it is coloured by
    best = summary["top_units"][0]
    layer = Select(driver.find_element(By.ID, "layer"))
    gate, unit = Select(driver.find_element(By.ID, "gate")), Select(driver.find_element(By.ID, "unit"))
    assert (gate.first_selected_option.get_attribute("value"), unit.first_selected_option.get_attribute("value")) \
        == (best["gate"], str(best["unit"]))
    titles = driver.execute_script("return [...document.querySelectorAll('#text span.ch')].map(s => s.title)")
    shown = np.array([float(t.split("= ")[1]) for t in titles])
    v = acts.values[(best["layer"], best["direction"])][best["gate"]][:, :, best["unit"]].reshape(-1)
    span = v.max() - v.min()
    assert np.abs(shown - v).max() <= span / 255 + 1e-3  # uint8 quantisation and 3 printed decimals
    before = _colours(driver, "#text span.ch")
    assert len(set(before)) > 10

    # the colouring follows the picked unit, gate and layer
    seen = [before]
    other = next(u for u in range(12) if str(u) != unit.first_selected_option.get_attribute("value"))
    unit.select_by_value(str(other))
    seen.append(_colours(driver, "#text span.ch"))
    gate.select_by_value("c" if best["gate"] != "c" else "f")
    seen.append(_colours(driver, "#text span.ch"))
    layer.select_by_index(3 if layer.first_selected_option.get_attribute("value") != "3" else 0)
    seen.append(_colours(driver, "#text span.ch"))
    for a, b in zip(seen, seen[1:]):
        assert sum(x != y for x, y in zip(a, b)) > 50
    assert re.search(r"unit \d+$", driver.find_element(By.ID, "view-title").text)

    # clicking a row of the top-units table selects that unit
    row = driver.find_elements(By.CSS_SELECTOR, "#top tbody tr")[1]
    row.click()
    pick = summary["top_units"][1]
    assert unit.first_selected_option.get_attribute("value") == str(pick["unit"])
    assert gate.first_selected_option.get_attribute("value") == pick["gate"]
    assert _errors(driver) == []


def test_sequence_page_shows_heatmaps(driver, tmp_path):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="gru", hidden_size=10), input_size=2, output_size=1, target="regression")
    x, y = adding_problem(3, 40, generator=torch.Generator().manual_seed(0))
    inspect_model(model, tmp_path, x=x, y=y, lengths=torch.tensor([40, 30, 20]), reference=False)
    _open(driver, tmp_path / "index.html")
    assert _errors(driver) == []
    _screenshot_not_blank(driver)
    # one heatmap canvas per sequence, units x time, with varied pixels
    stats = driver.execute_script("""
        return [...document.querySelectorAll('canvas.heat')].map(c => {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, s = new Set();
          for (let k = 0; k < d.length; k += 4) s.add(d[k] + ',' + d[k + 1] + ',' + d[k + 2]);
          return [c.width, c.height, s.size];
        })""")
    assert [s[:2] for s in stats] == [[40, 10]] * 3 and all(s[2] > 20 for s in stats)
    strips = _colours(driver, "#text span.ch")
    assert len(strips) == 40 + 30 + 20
    Select(driver.find_element(By.ID, "unit")).select_by_value("3" if driver.find_element(
        By.ID, "unit").get_attribute("value") != "3" else "4")
    after = _colours(driver, "#text span.ch")
    assert sum(a != b for a, b in zip(strips, after)) > 20
    heat_before = driver.execute_script("return document.querySelector('canvas.heat').toDataURL()")
    Select(driver.find_element(By.ID, "gate")).select_by_value("r")
    assert driver.execute_script("return document.querySelector('canvas.heat').toDataURL()") != heat_before
    assert _errors(driver) == []


@pytest.mark.parametrize("texts", [None, ["<!--<script>", "ab"], ["</script>", "ab"], ["<!--", "ab"]],
                         ids=["all", "comment-script", "end-script", "comment"])
def test_hostile_text_shows_literally(driver, tmp_path, texts):
    from test_inspect_hostile import TITLE, hostile_page

    page, texts = hostile_page(texts)  # "<!--<script>" alone left the page blank before the data was escaped
    path = tmp_path / "hostile.html"
    path.write_text(page, encoding="utf-8")
    _open(driver, path)  # the script ran to the end: nothing in the text ended or hid it
    assert _errors(driver) == []
    shown = driver.execute_script("return [...document.querySelectorAll('#text span.ch')].map(s => s.textContent)")
    assert "".join(shown) == "".join(texts)  # character for character, NUL and controls included
    assert driver.execute_script("return document.getElementById('title').textContent") == TITLE
    assert driver.execute_script("return document.querySelectorAll('script').length") == 1
