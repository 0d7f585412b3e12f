//! The locality graph: locations joined by links weighted with latency.
//!
//! Locality between two locations is the shortest-path latency in this
//! undirected graph (Dijkstra, via petgraph). The table of all pairs is
//! computed once, when the topology is loaded, so ranking a cluster is a
//! lookup rather than a graph search.

use petgraph::algo::dijkstra;
use petgraph::graph::{NodeIndex, UnGraph};
use serde::Serialize;

/// A location's index in the topology's `locations` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LocationId(pub u32);

/// All-pairs shortest latency between locations, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    names: Vec<String>,
    /// `latency[a][b]`: `None` when no path joins `a` and `b`.
    latency: Vec<Vec<Option<u64>>>,
    /// The links it was built from, so that locations can be added later.
    links: Vec<(LocationId, LocationId, u64)>,
}

impl Locality {
    /// Builds the graph from location names and `(from, to, latency_ms)` links
    /// between them (indices into `names`).
    pub fn new(names: Vec<String>, links: &[(LocationId, LocationId, u64)]) -> Self {
        let mut graph: UnGraph<(), u64> = UnGraph::with_capacity(names.len(), links.len());
        let nodes: Vec<NodeIndex> = names.iter().map(|_| graph.add_node(())).collect();
        for &(a, b, ms) in links {
            graph.add_edge(nodes[a.0 as usize], nodes[b.0 as usize], ms);
        }
        let latency = nodes
            .iter()
            .map(|&from| {
                let dist = dijkstra(&graph, from, None, |e| *e.weight());
                nodes.iter().map(|to| dist.get(to).copied()).collect()
            })
            .collect();
        Locality {
            names,
            latency,
            links: links.to_vec(),
        }
    }

    /// Shortest-path latency from `a` to `b`; `None` if they are not joined.
    #[inline]
    pub fn latency_ms(&self, a: LocationId, b: LocationId) -> Option<u64> {
        self.latency[a.0 as usize][b.0 as usize]
    }

    pub fn id(&self, name: &str) -> Option<LocationId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| LocationId(i as u32))
    }

    pub fn name(&self, id: LocationId) -> &str {
        &self.names[id.0 as usize]
    }

    /// The `(from, to, latency_ms)` links the graph was built from.
    pub fn links(&self) -> &[(LocationId, LocationId, u64)] {
        &self.links
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_the_shortest_path() {
        // a -70- b, a -20- c, c -30- b: a..b is 50 through c, not 70.
        let l = Locality::new(
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
            &[
                (LocationId(0), LocationId(1), 70),
                (LocationId(0), LocationId(2), 20),
                (LocationId(2), LocationId(1), 30),
            ],
        );
        assert_eq!(l.latency_ms(LocationId(0), LocationId(1)), Some(50));
        assert_eq!(l.latency_ms(LocationId(1), LocationId(0)), Some(50));
        assert_eq!(l.latency_ms(LocationId(0), LocationId(0)), Some(0));
        assert_eq!(l.latency_ms(LocationId(0), LocationId(3)), None);
        assert_eq!(l.id("c"), Some(LocationId(2)));
    }
}
