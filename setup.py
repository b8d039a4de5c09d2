"""Packaging for Clickpass: the ``clickpass`` library and its twistd plugin."""

from setuptools import Extension, find_packages, setup

# The front's HTTP/1.1 parser (docs/balancer.md): C, one call per request or response head.
HTTP1 = Extension(
    "clickpass.balancer._http1",
    sources=["clickpass/balancer/csrc/_http1module.c", "clickpass/balancer/csrc/http1.c"],
    depends=["clickpass/balancer/csrc/http1.h"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
)

setup(
    name="clickpass",
    version="0.1.0",
    description="Single sign-on for websites over OpenID 2.0, run as a twistd plugin.",
    python_requires=">=3.11",
    packages=[*find_packages(include=["clickpass", "clickpass.*"]), "twisted.plugins"],
    package_data={
        "clickpass": [
            "py.typed",
            "**/*.html",
            "mail/templates/mail/*.txt",
            # The catalogs, compiled in memory when first used (clickpass/i18n.py).
            "locale/*/LC_MESSAGES/*.po",
            "web/static/*",
            "balancer/*.pyi",
        ],
    },
    include_package_data=True,
    ext_modules=[HTTP1],
    install_requires=[
        # At most the release series the front's use of Twisted's private
        # transport attributes was checked on (clickpass/balancer/
        # twisted_internals.py, tests/unit/balancer/test_twisted_internals.py):
        # raise it once that test passes on the newer Twisted.
        "twisted[tls]>=24.7,<27",
        "automat>=24.8",
        "python3-openid==3.2.0",
        "pymysql>=1.1",
        "argon2-cffi>=23.1",
        "treq>=24.9",
        "jinja2>=3.1",
        # Translations: reads the .po catalogs at start (clickpass/i18n.py)
        # and extracts and updates them (scripts/i18n).
        "Babel>=2.12",
        "service-identity>=24.1",
        "idna>=3.6",
        # Wildcard realms are judged against the Public Suffix List it ships
        # (no download at run time).
        "publicsuffixlist>=1.0",
        "PyJWT[crypto]>=2.8",
        "boto3>=1.34",
        # Second factors: the TOTP enrolment QR code, as SVG.
        "segno>=1.6",
        # The partner guides served at /docs/partners: CommonMark to HTML with
        # raw HTML refused (clickpass/partners/guides.py).
        "markdown-it-py>=3.0",
        # Second factors: WebAuthn security keys and passkeys (registration and
        # assertion checks: CBOR, COSE keys, attestation, signatures).
        "webauthn>=3.0,<4",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.3",
            # Twisted's own reactor tests, run against clickpass.epoll_reactor, need it.
            "PyHamcrest>=2.0",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0",
            "types-PyMySQL",
            "requests>=2.31",
            "moto[server]>=5.0",
            "selenium>=4.20",
            "types-requests",
            # An independent TOTP implementation the tests check ours against.
            "pyotp>=2.9",
            # A real SMTP server (STARTTLS, AUTH, refusals) for the mail tests.
            "aiosmtpd>=1.4",
            # A second, independent JOSE library verifies the OpenID Connect tokens.
            "joserfc>=1.0",
            # Property-based fuzzing of the OpenID endpoint through a real node.
            "hypothesis>=6.100",
            # The architecture's import rules (pyproject.toml [tool.importlinter]).
            "import-linter>=2.1",
            # A relying-party library that signs in through the OpenID Connect provider.
            "Authlib>=1.3",
            # scripts/test runs the suite on as many workers as the machine has cores.
            "pytest-xdist>=3.6",
            # Line coverage: .venv/bin/coverage run -m pytest tests/unit (README).
            "coverage>=7.4",
            # Types for boto3's S3 client (clickpass/backup/store.py): boto3 ships none.
            "boto3-stubs[s3]",
        ],
    },
    entry_points={"console_scripts": ["clickpass-ctl = clickpass.control.ctl:main"]},
)
