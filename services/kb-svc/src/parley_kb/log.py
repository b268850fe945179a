import logging

logger = logging.getLogger("parley_kb")
