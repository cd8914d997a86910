"""A story tree's moves that need no model (undo, switch branch, edit memory) and its text."""

from __future__ import annotations

from memory.errors import InvalidRecord
from memory.records import Story, StoryNode
from memory.stories import StoryStore


class StoryTree:
    """A story tree's moves that need no model: undo, switch branch, edit memory, read."""

    def __init__(self, stories: StoryStore) -> None:
        self.stories = stories

    def undo(self, story_id: int) -> StoryNode:
        """Move the head back to its parent (the undone step stays, as a branch)."""
        story = self.stories.get(story_id)
        head = self.stories.node(story_id, self._head(story))
        if head.parent_id is None:
            raise InvalidRecord("nothing to undo: the story is at its opening")
        self.stories.set_head(story_id, head.parent_id)
        return self.stories.node(story_id, head.parent_id)

    def switch(self, story_id: int, node_id: int) -> StoryNode:
        """Continue from any node (another branch): the next step sees that node's memory."""
        self.stories.set_head(story_id, node_id)
        return self.stories.node(story_id, node_id)

    def edit_memory(self, story_id: int, node_id: int, short_term_memory: str) -> StoryNode:
        """The writer's own short-term memory for a node (the next step reads it)."""
        if not short_term_memory.strip():
            raise InvalidRecord("short-term memory cannot be empty; write a sentence or two")
        return self.stories.update_node(story_id, node_id, short_term_memory=short_term_memory)

    def text(self, story_id: int, node_id: int | None = None) -> str:
        """The story from its opening to ``node_id`` (default: the head)."""
        return story_text(self.stories, story_id, node_id)

    @staticmethod
    def _head(story: Story) -> int:
        if story.head_node_id is None:
            raise InvalidRecord(f"story {story.id} has no opening yet; start it first")
        return story.head_node_id


def story_text(stories: StoryStore, story_id: int, node_id: int | None = None) -> str:
    """A story's paragraphs from its opening to ``node_id`` (default: the head); "" if none."""
    target = node_id or stories.get(story_id).head_node_id
    if target is None:
        return ""
    return "\n\n".join(node.paragraph for node in stories.path(story_id, target))
