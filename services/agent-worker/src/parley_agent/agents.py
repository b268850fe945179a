"""The agents: an intake assistant that answers and can hand the conversation to a tenant's
specialists (history kept), and those specialists, who can hand it back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from livekit.agents import Agent, llm

from .config import Specialist
from .log import logger

# Called on every finished user turn before the reply is generated (e.g. attach video frames,
# start the turn latency clock). It may modify the message in place.
UserTurnHook = Callable[[llm.ChatMessage], None]

_HANDOFF_NOTE = (
    "\n\nYou have just been handed this conversation by a colleague; the history above is "
    "yours. Continue helping the user without repeating what was already said."
)


def _noop(message: llm.ChatMessage) -> None:
    return None


class ParleyAgent(Agent):
    """Base of Parley's agents: runs the session's user-turn hook before each reply."""

    def __init__(
        self,
        *,
        instructions: str,
        tools: Sequence[llm.Tool],
        on_user_turn: UserTurnHook | None = None,
        chat_ctx: llm.ChatContext | None = None,
        agent_id: str | None = None,
    ) -> None:
        super().__init__(
            instructions=instructions, tools=list(tools), chat_ctx=chat_ctx, id=agent_id
        )
        self._on_user_turn = on_user_turn or _noop

    async def on_user_turn_completed(
        self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage
    ) -> None:
        try:
            self._on_user_turn(new_message)
        except Exception:
            # A failed attachment must not lose the user's turn.
            logger.exception("user turn hook failed")


class SpecialistAgent(ParleyAgent):
    def __init__(
        self,
        *,
        spec: Specialist,
        base_tools: Sequence[llm.Tool],
        back_to_intake: Callable[[llm.ChatContext], Agent] | None,
        on_user_turn: UserTurnHook | None,
        chat_ctx: llm.ChatContext,
    ) -> None:
        self.spec = spec
        tools = list(base_tools)
        if back_to_intake is not None:
            tools.append(_transfer_back_tool(back_to_intake, self))
        super().__init__(
            instructions=spec.instructions + _HANDOFF_NOTE,
            tools=tools,
            on_user_turn=on_user_turn,
            chat_ctx=chat_ctx,
            agent_id=f"specialist_{spec.name}",
        )

    async def on_enter(self) -> None:
        # Answer the question that prompted the transfer, with the whole history in view.
        self.session.generate_reply()


class IntakeAgent(ParleyAgent):
    """The first agent of a session; one `transfer_to_<name>` tool per configured specialist."""

    def __init__(
        self,
        *,
        instructions: str,
        tools: Sequence[llm.Tool],
        specialists: Sequence[Specialist] = (),
        on_user_turn: UserTurnHook | None = None,
        chat_ctx: llm.ChatContext | None = None,
    ) -> None:
        self._base_instructions = instructions
        self._base_tools = list(tools)
        self._specialists = list(specialists)
        self._hook = on_user_turn
        self._returning = chat_ctx is not None
        all_tools = list(tools) + [self._transfer_tool(s) for s in specialists]
        if specialists:
            names = ", ".join(s.name for s in specialists)
            instructions += (
                f"\n\nSpecialists you can transfer the user to when their request is theirs: "
                f"{names}. Use the matching transfer tool."
            )
        super().__init__(
            instructions=instructions,
            tools=all_tools,
            on_user_turn=on_user_turn,
            chat_ctx=chat_ctx,
            agent_id="intake",
        )

    async def on_enter(self) -> None:
        if self._returning:
            self.session.generate_reply()

    def _rebuild(self, chat_ctx: llm.ChatContext) -> Agent:
        return IntakeAgent(
            instructions=self._base_instructions,
            tools=self._base_tools,
            specialists=self._specialists,
            on_user_turn=self._hook,
            chat_ctx=chat_ctx,
        )

    def _transfer_tool(self, spec: Specialist) -> llm.RawFunctionTool[..., Any]:
        async def transfer(raw_arguments: dict[str, object]) -> Agent:
            logger.info("handing off to specialist", extra={"specialist": spec.name})
            return SpecialistAgent(
                spec=spec,
                base_tools=self._base_tools,
                back_to_intake=self._rebuild,
                on_user_turn=self._hook,
                chat_ctx=self.chat_ctx.copy(exclude_instructions=True),
            )

        return llm.function_tool(
            transfer,
            raw_schema={
                "name": f"transfer_to_{spec.name}",
                "description": f"Transfer the conversation to the {spec.name} specialist: "
                f"{spec.description}",
                "parameters": {"type": "object", "properties": {}, "required": []},
            },
        )


def _transfer_back_tool(
    back_to_intake: Callable[[llm.ChatContext], Agent], specialist: SpecialistAgent
) -> llm.RawFunctionTool[..., Any]:
    async def transfer_back(raw_arguments: dict[str, object]) -> Agent:
        return back_to_intake(specialist.chat_ctx.copy(exclude_instructions=True))

    return llm.function_tool(
        transfer_back,
        raw_schema={
            "name": "transfer_to_intake",
            "description": "Hand the conversation back to the general assistant when the user's "
            "request is outside your speciality.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    )
