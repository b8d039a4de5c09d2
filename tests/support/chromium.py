"""
A real headless Chromium for the browser tests (Debian's chromium, driven
through chromedriver by Selenium), and the few habits every such test needs:
wait for an element, type into a field, click something that loads another
page and wait until the old page is gone.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

__all__ = [
    "By",
    "WebDriver",
    "WebDriverWait",
    "WebElement",
    "chromium",
    "click",
    "gone",
    "submit",
    "type_into",
    "wait_for",
]


@contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    """A headless Chromium with its own profile directory, quit on the way out."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        raise AssertionError("chromium and chromium-driver are needed (Debian packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
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
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout: float = 20) -> WebElement:
    """The first element matching C{css}, once it is on the page."""
    try:
        return WebDriverWait(driver, timeout).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
        )
    except Exception:
        raise AssertionError(
            f"{css} not found at {driver.current_url}:\n{driver.page_source[:3000]}"
        ) from None


def type_into(driver: WebDriver, css: str, text: str) -> None:
    element = driver.find_element(By.CSS_SELECTOR, css)
    element.clear()
    element.send_keys(text)


def gone(old: WebElement) -> Callable[[WebDriver], bool]:
    """
    A wait condition: C{old} has left the page. Chromium says so as a stale
    element, or as a node that "does not belong to the document".
    """

    def check(driver: WebDriver) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
        return False

    return check


def click(driver: WebDriver, target: str | WebElement, timeout: float = 20) -> None:
    """
    Click C{target} (an element, or the CSS selector of one), which loads
    another page, and wait until the old page is gone.
    """
    old = driver.find_element(By.TAG_NAME, "html")
    for attempt in range(3):
        # Chromium may still be settling the page it just loaded: an element
        # found a moment before can "not belong to the document" when
        # clicked. Find it again (given a selector) and retry; a third
        # failure is real.
        try:
            if isinstance(target, str):
                driver.find_element(By.CSS_SELECTOR, target).click()
            else:
                target.click()
            break
        except WebDriverException:
            if gone(old)(driver):
                break  # the click went through: the next page is loading
            if attempt == 2 or not isinstance(target, str):
                raise
            time.sleep(0.2)
    WebDriverWait(driver, timeout).until(gone(old))


def submit(driver: WebDriver, form: str, fields: dict[str, str]) -> None:
    """Fill C{fields} of the form matching C{form} and press its button."""
    for name, value in fields.items():
        type_into(driver, f"{form} [name='{name}']", value)
    click(driver, f"{form} button")
