"""
Checks a person-facing page must pass in a real Chromium, at a desktop's
and a phone's size: no horizontal scrolling, and no WCAG 2.x A/AA
violation that axe-core (npm, installed from axe/package-lock.json the
first time it is needed) finds. Each page's screenshots are kept under
test-artifacts/screenshots/ (the screenshots fixture, tests/conftest.py).
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from tests.support.chromium import By, WebDriver
from tests.support.languages import on_mariadb

AXE_DIR = Path(__file__).parent / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
# WCAG 2.0, 2.1 and 2.2, levels A and AA: axe's tags for them.
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"]
# A desktop, and a phone (390 px wide, as an iPhone 12 to 15).
VIEWPORTS = {"desktop": (1280, 800, False), "phone": (390, 844, True)}


def axe_source() -> str:
    """axe.min.js, installed with `npm ci` under a lock the first time it is needed."""
    with open(AXE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not AXE_JS.exists():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail(
                    "npm is needed to install axe-core (apt-get install npm)", pytrace=False
                )
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=AXE_DIR,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                pytest.fail(f"npm ci for axe-core failed:\n{result.stderr[-2000:]}", pytrace=False)
    return AXE_JS.read_text(encoding="utf-8")


RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {runOnly: {type: "tag", values: arguments[0]}, resultTypes: ["violations"]})
  .then(function (results) {
    done(results.violations.map(function (v) {
      return {id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.map(function (n) {
                return {target: n.target.join(" "), summary: n.failureSummary}; })};
    }));
  })
  .catch(function (e) { done([{id: "axe-error", help: String(e), nodes: []}]); });
"""

OVERFLOW = """
const root = document.documentElement;
const wide = [];
for (const el of document.body.querySelectorAll("*")) {
  const r = el.getBoundingClientRect();
  if (r.width > 0 && r.right > root.clientWidth + 1) {
    wide.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
              + (el.className && typeof el.className === "string" ? "." + el.className : ""));
  }
}
return {scroll: root.scrollWidth, client: root.clientWidth, wide: wide.slice(0, 8)};
"""

# The element that has the keyboard focus: its focus ring's width and its
# contrast with the background around it (WCAG 2.2 2.4.7, 1.4.11 and 2.4.13:
# at least 3:1), and whether it follows the previous one in the document
# (keyboard order is reading order: no positive tabindex).
FOCUSED = r"""
const el = document.activeElement;
if (!el || el === document.body) { return null; }
function rgba(text) {
  const m = text.match(/rgba?\(([^)]+)\)/);
  if (!m) { return [0, 0, 0, 0]; }
  const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(parseFloat);
  return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
}
function luminance(c) {
  const f = function (v) {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
}
function behind(e) {
  for (let n = e.parentElement; n; n = n.parentElement) {
    const c = rgba(getComputedStyle(n).backgroundColor);
    if (c[3] > 0) { return c; }
  }
  return [255, 255, 255, 1];
}
const style = getComputedStyle(el);
const width = style.outlineStyle === "none" ? 0 : parseFloat(style.outlineWidth);
const ring = rgba(style.outlineColor);
const around = behind(el);
const a = luminance(ring), b = luminance(around);
const hi = Math.max(a, b), lo = Math.min(a, b);
const previous = window.__a11yPrevious;
const following = Node.DOCUMENT_POSITION_FOLLOWING;
const inOrder = !previous || !!(previous.compareDocumentPosition(el) & following);
window.__a11yPrevious = el;
return {name: el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
          + (el.getAttribute("href") ? "[href=" + el.getAttribute("href") + "]" : ""),
        width: width, contrast: (hi + 0.05) / (lo + 0.05), inOrder: inOrder,
        first: previous === undefined ? false : el === window.__a11yFirst,
        setFirst: previous === undefined ? (window.__a11yFirst = el, true) : false};
"""
MAX_TABS = 80

# Words a style sheet adds (a ::before or ::after with letters in its
# content): in no catalog, so the same in every language.
GENERATED_WORDS = r"""
const found = [];
for (const el of document.querySelectorAll("body *")) {
  for (const pseudo of ["::before", "::after"]) {
    const content = getComputedStyle(el, pseudo).content;
    if (content && content !== "none" && content !== "normal" && /\p{L}/u.test(content)) {
      found.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + pseudo + " " + content);
    }
  }
}
return found;
"""


@dataclass
class PageChecker:
    """Runs the checks on each page the test opens; collects what failed."""

    driver: WebDriver
    screenshots: Path
    axe: str
    # Press Tab through each page too (L{check_keyboard}): once per page is
    # enough, in one language, since focus rings and order do not change with it.
    keyboard: bool = True
    # The language the pages are in: in any but English, no words may come
    # from the style sheet (they would be English).
    language: str = "en"
    # False: L{check} does nothing, for a walk whose pages another run of it
    # checks (the same walk on another storage backend).
    enabled: bool = True
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def viewport(self, width: int, height: int, mobile: bool) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def check(self, name: str) -> None:
        """Check the page now open at both sizes; the desktop size is left set."""
        if not self.enabled:
            return
        driver = self.driver
        self.checked.append(name)
        for size, (width, height, mobile) in VIEWPORTS.items():
            self.viewport(width, height, mobile)
            # The layout settles at the new size before anything is measured.
            driver.execute_script("return document.body.getBoundingClientRect().width")
            overflow: dict[str, Any] = driver.execute_script(OVERFLOW)
            if overflow["scroll"] > overflow["client"]:
                self.problems.append(
                    f"{name} at {width}x{height} ({driver.current_url}) scrolls sideways: "
                    f"{overflow['scroll']} px wide in {overflow['client']} px; "
                    f"too wide: {', '.join(overflow['wide'])}"
                )
            if not driver.execute_script("return typeof window.axe !== 'undefined'"):
                driver.execute_script(self.axe)
            violations = driver.execute_async_script(RUN_AXE, WCAG_TAGS)
            for v in violations:
                where = "; ".join(
                    f"{n['target']}: {' '.join(str(n['summary']).split())}" for n in v["nodes"][:5]
                )
                self.problems.append(
                    f"{name} at {width}x{height} ({driver.current_url}): axe {v['id']} "
                    f"({v.get('impact')}): {v['help']} -- {where}"
                )
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            driver.save_screenshot(str(self.screenshots / f"{slug}-{size}.png"))
        self.viewport(*VIEWPORTS["desktop"])
        if self.language != "en":
            for words in driver.execute_script(GENERATED_WORDS):
                self.problems.append(
                    f"{name} in {self.language} ({driver.current_url}): the style sheet "
                    f"writes {words}, in no language's catalog"
                )
        if self.keyboard:
            self.check_keyboard(name)

    def check_keyboard(self, name: str) -> None:
        """
        Press Tab through the page: every element reached shows a focus ring
        at least 2 px wide with 3:1 contrast, in document order.
        """
        driver = self.driver
        driver.execute_script(
            "delete window.__a11yPrevious; delete window.__a11yFirst;"
            " document.activeElement && document.activeElement.blur();"
            " window.scrollTo(0, 0);"
        )
        body = driver.find_element(By.TAG_NAME, "body")
        ActionChains(driver).move_to_element_with_offset(body, 0, 0).perform()
        reached = []
        for _ in range(MAX_TABS):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            focused = driver.execute_script(FOCUSED)
            if focused is None or focused["first"]:
                break  # back to the start (or out to the browser's own controls)
            reached.append(focused["name"])
            if focused["width"] < 2 or focused["contrast"] < 3:
                self.problems.append(
                    f"{name} ({driver.current_url}): the focus ring of {focused['name']} is "
                    f"{focused['width']} px wide at {focused['contrast']:.2f}:1 (needs 2 px, 3:1)"
                )
            if not focused["inOrder"]:
                self.problems.append(
                    f"{name}: Tab went back up the page to {focused['name']} (order: {reached})"
                )
        if not reached:
            self.problems.append(f"{name} ({driver.current_url}): Tab reaches nothing")

    def report(self) -> str:
        return json.dumps(self.problems, indent=1)


def checker(
    driver: WebDriver,
    screenshots: Path,
    keyboard: bool = True,
    language: str = "en",
    enabled: bool = True,
) -> PageChecker:
    """
    A L{PageChecker} whose screenshots go in C{screenshots} (the fixture of
    that name); C{keyboard}: with the keyboard's walk through each page;
    C{language}: the language the pages are in; C{enabled}: False for one
    that checks nothing.
    """
    driver.set_script_timeout(60)
    return PageChecker(driver, screenshots, axe_source(), keyboard, language, enabled)


def walk_checker(
    request: pytest.FixtureRequest,
    driver: WebDriver,
    screenshots: Path,
    language: str,
    fixture: str = "node",
) -> PageChecker:
    """
    The L{checker} of a walk in C{language} over a node parametrized over
    the storage backends (the fixture C{fixture}): the keyboard's walk in
    English only (focus rings and order do not change with the language),
    the pages checked on SQLite's node only (the storage does not change
    them).
    """
    return checker(
        driver,
        screenshots,
        keyboard=language == "en",
        language=language,
        enabled=not on_mariadb(request, fixture),
    )
