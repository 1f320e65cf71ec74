//! The plans of `add`, `remove` and `replace`: the fewest shards moved, and checked input.

use super::*;
use crate::cluster::placement::spec;

fn three() -> Placement {
    Placement::initial("c", 64, 1, ["i0", "i1", "i2"].map(spec).to_vec()).unwrap()
}

fn counts(placement: &Placement) -> Vec<usize> {
    placement.sets.iter().map(|set| shards_of(&set.shards).len()).collect()
}

/// 64 shards over 3 sets (21, 21, 22): a fourth set must hold at least
/// floor(64 / 4) = 16 for the sets to differ by at most one, so 16 move,
/// all to it, and no shard moves between the old sets.
#[test]
fn adding_a_set_moves_the_fewest_shards_the_balance_allows() {
    let before = three();
    let after = plan(&before, &Request::Add(vec![spec("i3")]), 0, 1_000).unwrap();
    let change = after.change.clone().unwrap();
    assert_eq!(change.shards_moved(), 64 / 4);
    assert!(change.moves.iter().all(|handoff| handoff.to_set == 3));
    assert_eq!(counts(&after), vec![16, 16, 16, 16]);
    for shard in 0..64 {
        let (old, new) = (before.set_of_shard(shard).set, after.set_of_shard(shard).set);
        assert!(old == new || new == 3, "shard {shard} moved between old sets");
        assert_eq!(after.moving_from(shard).is_some(), old != new);
    }
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.next_set, 4);
}

#[test]
fn removing_a_set_deals_out_only_its_shards_and_keeps_it_until_the_handoff_completes() {
    let before = three();
    let after = plan(&before, &Request::Remove(vec!["i1".into()]), 0, 1_000).unwrap();
    let change = after.change.clone().unwrap();
    assert_eq!(
        change.shards_moved(),
        21,
        "every shard of the leaving set, and no other"
    );
    assert_eq!(counts(&after), vec![32, 0, 32]);
    assert_eq!(change.leaving_sets, vec![1]);
    assert!(change.moves.iter().all(|handoff| handoff.from_set == 1));
    assert!(after.set_of_instance("i1").is_some(), "it flushes until the cutoff");
    let refused = plan(&before, &Request::Remove(vec!["i9".into()]), 0, 1).unwrap_err();
    assert!(refused.to_string().contains("not in the placement"), "{refused}");
}

#[test]
fn a_replace_moves_no_shard_and_keeps_the_old_instance_until_the_handoff_completes() {
    let before = three();
    let request = Request::Replace {
        old: "i1".into(),
        new: spec("i5"),
    };
    let after = plan(&before, &request, 0, 1_000).unwrap();
    let change = after.change.clone().unwrap();
    assert_eq!(change.shards_moved(), 0);
    assert_eq!(after.sets[1].instances.len(), 2);
    assert_eq!(change.handing_off(&after), vec![1]);
    let twice = plan(&before, &Request::Add(vec![spec("i0")]), 0, 1).unwrap_err();
    assert!(twice.to_string().contains("already in the placement"), "{twice}");
}

#[test]
fn a_remove_then_an_add_never_reuses_a_set_id() {
    let before = three();
    let removed = plan(&before, &Request::Remove(vec!["i2".into()]), 0, 1).unwrap();
    let added = plan(&removed, &Request::Add(vec![spec("i9")]), 0, 1);
    // The placement still carries the first change: plan itself does not
    // refuse (stage does), but the id is fresh either way.
    assert_eq!(added.unwrap().sets.last().unwrap().set, 3);
}
