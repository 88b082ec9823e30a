//! Built-in model shapes: models too large to have here, named
//! `MODEL:RECIPE`. Each is a [`SimModel`] in JSON under
//! `daemon/planner/catalog/`, written by `dwarfstar-model`'s shape code
//! from the published configurations (its test
//! `builtin_shapes_match_the_planner_catalog` recomputes every entry and
//! fails when a file differs, so they cannot drift).

use super::{SimError, SimModel};

/// (name, JSON) of every built-in shape.
pub const CATALOG: &[(&str, &str)] = &[
    (
        "deepseek-v4-flash:dwarf-q2",
        include_str!("../../catalog/deepseek-v4-flash.dwarf-q2.json"),
    ),
    (
        "deepseek-v4-flash:q4_k",
        include_str!("../../catalog/deepseek-v4-flash.q4_k.json"),
    ),
    (
        "deepseek-v3:q4_k_m",
        include_str!("../../catalog/deepseek-v3.q4_k_m.json"),
    ),
    (
        "deepseek-v3:q8_0",
        include_str!("../../catalog/deepseek-v3.q8_0.json"),
    ),
];

/// The names of the built-in shapes.
pub fn names() -> Vec<&'static str> {
    CATALOG.iter().map(|(n, _)| *n).collect()
}

/// The built-in shape `name` (`MODEL:RECIPE`).
pub fn builtin(name: &str) -> Result<SimModel, SimError> {
    let (_, json) = CATALOG.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        SimError::Hardware(format!(
            "no built-in model {name} (known: {})",
            names().join(", ")
        ))
    })?;
    serde_json::from_str(json).map_err(|e| SimError::Parse(format!("built-in {name}: {e}")))
}
