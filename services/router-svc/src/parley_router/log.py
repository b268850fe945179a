"""Logger of router-svc."""
import logging

logger = logging.getLogger("parley_router")
