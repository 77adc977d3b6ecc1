"""Handrail inside other agent frameworks: `HandrailMiddleware` for LangChain's ``create_agent``.

Needs the ``langchain`` extra: ``pip install 'handrail[langchain]'``.
"""

from handrail.integrations.langchain import CompositionError, HandrailMiddleware

__all__ = ["CompositionError", "HandrailMiddleware"]
