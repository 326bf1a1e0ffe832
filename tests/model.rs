//! A model test: random sequences of operations on a real cache, checked
//! against a map in memory. With the default policy and limits far away,
//! nothing is evicted, so the cache must agree with the map exactly.


use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;
use crate::support::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u64),
    Get(u8),
    GetOrInsert(u8, u64),
    Corrupt(u8, usize),
    Maintain,
    AdvanceHours(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..8;
    prop_oneof![
        4 => (key.clone(), any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        4 => key.clone().prop_map(Op::Get),
        2 => (key.clone(), any::<u64>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
        1 => (key, any::<usize>()).prop_map(|(k, at)| Op::Corrupt(k, at)),
        1 => Just(Op::Maintain),
        1 => (1u8..3).prop_map(Op::AdvanceHours),
        1 => Just(Op::Reopen),
    ]
}

fn value(seed: u64) -> Vec<u8> {
    incompressible(seed, (seed % 3000) as usize)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Beside this file, as tests/model.proptest-regressions.
        failure_persistence: Some(Box::new(prop::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cache_agrees_with_a_map(ops in prop::collection::vec(op(), 1..60)) {
        let t = TestCache::new();
        let mut cache = t.open();
        let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
        let (mut corrupted, mut detected) = (0, 0);
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    // Stored now, or, while a maintenance pass holds the
                    // policy, by the worker: flush waits for that.
                    if !cache.insert(&[k], &value(v)) {
                        cache.flush();
                    }
                    model.insert(k, value(v));
                }
                Op::Get(k) => prop_assert_eq!(cache.get(&[k]), model.get(&k).cloned()),
                Op::GetOrInsert(k, v) => {
                    let got = cache.get_or_insert_with(&[k], || Ok::<_, ()>(value(v))).unwrap();
                    if got.source == capcache::Source::Miss {
                        // As for an insert: the worker may store it.
                        cache.flush();
                    }
                    let expected = model.entry(k).or_insert_with(|| value(v)).clone();
                    prop_assert_eq!(got.bytes, expected);
                }
                // Only an entry the model still holds: damaging one twice at
                // the same offset would undo the first damage.
                Op::Corrupt(k, at) if model.contains_key(&k) => {
                    // The worker may be re-encoding this entry (hot entries go
                    // raw): let it finish, or it would replace the damage.
                    cache.flush();
                    let path = cache.entry_path(&[k]).unwrap();
                    if let Ok(mut bytes) = std::fs::read(&path) {
                        let at = at % bytes.len();
                        bytes[at] ^= 0x5a;
                        overwrite_entry(&path, &bytes);
                        model.remove(&k);
                        corrupted += 1;
                    }
                }
                Op::Corrupt(..) => {}
                Op::Maintain => {
                    let report = cache.maintain().unwrap();
                    prop_assert_eq!(report.evicted, 0);
                }
                Op::AdvanceHours(h) => t.clock.advance(Duration::from_secs(3600 * h as u64)),
                Op::Reopen => {
                    cache.flush();
                    detected += cache.stats().corrupt;
                    drop(cache);
                    cache = t.open();
                }
            }
        }
        cache.flush();
        // Only what the test damaged is ever found corrupt.
        prop_assert!(detected + cache.stats().corrupt <= corrupted);
        for k in 0..8u8 {
            prop_assert_eq!(cache.get(&[k]), model.get(&k).cloned());
        }
    }
}
