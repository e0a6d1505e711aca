"""TODO."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """One candidate input of a frozen head: a stage pooled to a grid x grid map."""

    name: str  # cache key: the stage name for grid 1, "<stage>@<g>x<g>" otherwise
    stage: str  # the stage the backbone runs up to
    stage_index: int
    grid: int  # 0 for a joined view (its members carry their own grids)
    width: int  # stage channels x grid x grid (a joined view: the sum over its members)
    # A joined view: its members' (stage index, grid) pairs, in stage order; () for one stage.
    parts: tuple[tuple[int, int], ...] = ()

    @property
    def taps(self) -> tuple[tuple[int, int], ...]:
        """The (stage index, grid) pairs whose pooled maps, side by side, are this view."""
        return self.parts or ((self.stage_index, self.grid),)


JOINER = "+"  # joins member view names into a joined view's name (and cache key)


JOIN_MAX = 3  # stages a joined view takes (the best view of each)


JOIN_WIDTH = 4096  # widest joined view


def joined_view(members: list[View]) -> View:
    """The view made of `members` side by side (each a single-stage view), in stage order."""
    members = sorted(members, key=lambda v: (v.stage_index, v.grid))
    return View(
        JOINER.join(v.name for v in members),
        members[-1].stage,  # the deepest: the backbone runs up to it
        members[-1].stage_index,
        0,
        sum(v.width for v in members),
        tuple((v.stage_index, v.grid) for v in members),
    )


def view_named(name: str, views: dict[str, View]) -> View | None:
    """The view called `name` among `views`, or the joined view of members among them."""
    if name in views:
        return views[name]
    members = name.split(JOINER)
    if len(members) > 1 and all(m in views for m in members):
        return joined_view([views[m] for m in members])
    return None


# Pooling grids tried per stage, and the widest head input kept (a 4x4 grid of a 1280-wide
# last stage would be 20,480 features: slow to fit, and never better in our measurements).
GRIDS = (1, 2, 4)


MAX_VIEW_WIDTH = 2048


def frozen_views(
    spec, grids: tuple[int, ...] = GRIDS, max_width: int = MAX_VIEW_WIDTH
) -> list[View]:
    """Every (stage, grid) candidate of a backbone, in stage order: grid 1 always, larger grids
    where the stage's map at the input size is at least that large and the flattened width
    stays within `max_width`."""
    size = spec.preprocessing.crop_size
    views = []
    for i, st in enumerate(spec.stages):
        for g in grids:
            side = max(1, size // max(st.stride, 1))
            if g == 1 or (side >= g and st.width * g * g <= max_width):
                name = st.name if g == 1 else f"{st.name}@{g}x{g}"
                views.append(View(name, st.name, i, g, st.width * g * g))
    return views
