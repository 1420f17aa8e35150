//! Helpers the fixture-parity tests share.

use tessera_fixtures::Fixture;
use tessera_t5::Batch;

/// The fixture's padded batch as tessera runs it: real tokens only.
pub fn batch(fx: &Fixture) -> Batch {
    let b = fx.padded_batch("").expect("the fixture's batch");
    Batch::from_padded(&b.input_ids, &b.attention_mask, &b.labels, b.rows)
        .expect("a right-padded batch")
}

/// The fixture's tolerance for `what` (`/tolerances/<what>` of meta.json).
pub fn tolerance(fx: &Fixture, what: &str) -> f64 {
    fx.number(&format!("/tolerances/{what}"))
        .expect("tolerance in meta.json")
}
