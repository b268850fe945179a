import logging

logger = logging.getLogger("parley.agent")
