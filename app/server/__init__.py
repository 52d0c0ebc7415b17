"""Every way in over the network: one `websockets` process serving the OpenAI-Realtime endpoint, the Twilio
Media Streams endpoint and the browser page. Thin adapters over the Conversation API (app/conversation.py)."""

from app.server.app import InsecureBindError, Server, check_bind

__all__ = ["InsecureBindError", "Server", "check_bind"]
