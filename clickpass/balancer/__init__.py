"""
The node's front: HTTP(S) listeners, a reverse-proxy balancer and the
supervised worker processes that serve the web application.
"""
