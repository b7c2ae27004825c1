"""The store's VMFile declarations (schema v5): recorded, replaced, listed per file,
and gone with their machine's row (ON DELETE CASCADE), so a deleted machine leaves
no declaration behind."""

from __future__ import annotations

from smolbox.store import MachineRecord, Store
from smolbox.store.records import DeclarationRecord
from smolbox.store.states import MachineState as S


def test_declarations_follow_their_machine(store: Store) -> None:
    for vm_id in ("m1", "m2"):
        store.insert_machine(MachineRecord(id=vm_id, name=f"n-{vm_id}", config={},
                                           image_ref="default"))
    store.put_declaration(DeclarationRecord("m1", "/p/VMFile.kdl", "web", "d1"))
    store.put_declaration(DeclarationRecord("m2", "/q/VMFile.kdl", "db", "d2", ("a",)))
    replaced = store.put_declaration(DeclarationRecord("m1", "/p/VMFile.kdl", "web", "d1",
                                                       ("s1", "s2")))
    assert store.get_declaration("m1") == replaced
    assert replaced.provisioned == ("s1", "s2") and replaced.updated_at > 0
    assert [d.vm_id for d in store.list_declarations("/p/VMFile.kdl")] == ["m1"]
    assert len(store.list_declarations()) == 2
    store.transition("m1", S.DELETED)
    store.delete_machine("m1")
    assert store.get_declaration("m1") is None
    assert [d.vm_id for d in store.list_declarations()] == ["m2"]
