from twisted.application.service import ServiceMaker

Clickpass = ServiceMaker(
    "Clickpass",
    "clickpass.tap",
    "Clickpass single sign-on node (OpenID 2.0 provider).",
    "clickpass",
)
