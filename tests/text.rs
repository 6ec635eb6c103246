//! The text form: every built-in round-trips through the printer and the parser, node for
//! node; hand-written text builds the graph its builder twin builds.

use optjit::{optim, text, Graph};

fn round_trip(graph: &Graph) {
    let printed = text::print(graph).unwrap();
    let parsed = match text::parse(&printed) {
        Ok(g) => g,
        Err(e) => panic!("{} does not parse back:\n{e}\n{printed}", graph.name()),
    };
    assert_eq!(
        &parsed, graph,
        "{printed}\nprinted graph:\n{graph}\nparsed:\n{parsed}"
    );
    assert_eq!(text::print(&parsed).unwrap(), printed);
}

#[test]
fn every_built_in_round_trips_node_for_node() {
    let mut bad = vec![];
    for name in optim::NAMES {
        let graph = optim::by_name(name).unwrap();
        if std::panic::catch_unwind(|| round_trip(&graph)).is_err() {
            bad.push(name);
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}
