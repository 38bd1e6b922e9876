"""Kernel names find their model: ``grep do_wp_page sim/kernel`` lands on the function.

Every function of the kernel's mm code that the model reproduces is either a ``def`` of
that exact name under ``sim/kernel/`` or named in a docstring there (module, class or
function), so an mm developer finds the model in one hop.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

KERNEL = Path(__file__).resolve().parent.parent / "sim" / "kernel"

DEFINED = (
    # A function of the model carries the kernel function's exact name.
    "do_wp_page", "wp_page_copy", "wp_can_reuse_anon_folio", "do_anonymous_page",
    "do_swap_page", "handle_pte_fault", "shmem_fault", "dup_mmap", "copy_pte_range",
    "copy_present_page", "get_user_pages", "check_vma_flags", "gup_must_unshare",
    "zap_pte_range", "can_change_pte_writable", "mprotect", "clear_refs_write",
    "clear_soft_dirty", "pagemap_read", "lru_add_drain", "lru_cache_add",
    "madvise_cold_or_pageout_pte_range", "shrink_folio_list", "delete_from_swap_cache",
    "try_to_free_swap", "free_swap_and_cache", "get_page", "put_page", "uffd_register",
    "uffd_writeprotect", "madvise",
)
DOCUMENTED = (
    # Named in a docstring of the function (or module) that models it.
    "copy_page_range", "pin_user_pages", "page_maybe_dma_pinned", "change_protection",
    "reuse_swap_page", "wp_page_reuse", "wp_page_shared", "unpin_user_pages",
    "flush_tlb_page", "flush_tlb_range", "flush_tlb_mm", "handle_userfault",
    "madvise_pageout", "shrink_page_list", "clear_refs_pte_range", "pagemap_pte_range",
    "FAULT_FLAG_UNSHARE", "FAULT_FLAG_WRITE", "struct vm_fault", "faultin_page",
    "PageAnonExclusive", "GUP_PIN_COUNTING_BIAS", "copy_present_ptes",
)


def _scan() -> tuple[set[str], str]:
    defs: set[str] = set()
    docs: list[str] = []
    for path in sorted(KERNEL.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module_doc = ast.get_docstring(tree)
        if module_doc:
            docs.append(module_doc)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if not isinstance(node, ast.ClassDef):
                    defs.add(node.name)
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                docs.append(node.value.value)  # attribute docstrings
    return defs, "\n".join(docs)


DEFS, DOCS = _scan()


@pytest.mark.parametrize("name", DEFINED)
def test_kernel_function_is_defined_under_its_name(name: str) -> None:
    assert name in DEFS, f"no def {name} under sim/kernel"


@pytest.mark.parametrize("name", DEFINED + DOCUMENTED)
def test_kernel_name_appears_in_a_docstring_or_def(name: str) -> None:
    words = re.escape(name)
    assert name in DEFS or re.search(rf"(?<![\w]){words}(?![\w])", DOCS), \
        f"{name} is neither a def nor named in a docstring under sim/kernel"


def test_renamed_functions_are_gone() -> None:
    """The model's old private names do not linger beside the kernel names."""
    for old in ("wp_can_reuse", "check_access", "zap_pages", "clear_refs_soft_dirty",
                "do_anonymous_write", "free_swap_entries", "_copy_run", "_early_copy"):
        assert old not in DEFS, old
