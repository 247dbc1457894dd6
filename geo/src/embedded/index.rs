//! The in-memory R-tree over document envelopes.
//!
//! Points (the common case) are kept as two floats, other shapes as a shared geometry, so
//! the exact test of a query never touches the disk.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use geo::{BoundingRect, Geometry, Point, Rect};
use rstar::{AABB, Envelope, RTree, RTreeObject, SelectionFunction};

use crate::backend::select;
use crate::query::Query;

/// One document in the index.
#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    pub(crate) id: Arc<str>,
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Point([f64; 2]),
    Other {
        envelope: AABB<[f64; 2]>,
        geometry: Arc<Geometry<f64>>,
    },
}

impl IndexEntry {
    /// `None` when the geometry has no extent to index (an empty collection).
    pub(crate) fn new(id: Arc<str>, geometry: Geometry<f64>) -> Option<Self> {
        let shape = match geometry {
            Geometry::Point(point) => Shape::Point([point.x(), point.y()]),
            other => {
                let rect = other.bounding_rect()?;
                Shape::Other {
                    envelope: aabb(&rect),
                    geometry: Arc::new(other),
                }
            }
        };
        Some(Self { id, shape })
    }

    fn geometry(&self) -> Cow<'_, Geometry<f64>> {
        match &self.shape {
            Shape::Point([x, y]) => Cow::Owned(Geometry::Point(Point::new(*x, *y))),
            Shape::Other { geometry, .. } => Cow::Borrowed(geometry),
        }
    }
}

impl RTreeObject for IndexEntry {
    type Envelope = AABB<[f64; 2]>;

    fn envelope(&self) -> Self::Envelope {
        match &self.shape {
            Shape::Point(point) => AABB::from_point(*point),
            Shape::Other { envelope, .. } => *envelope,
        }
    }
}

fn aabb(rect: &Rect<f64>) -> AABB<[f64; 2]> {
    AABB::from_corners([rect.min().x, rect.min().y], [rect.max().x, rect.max().y])
}

/// The id map of [`SpatialIndex`]: foldhash (seeded per process, like the engine's
/// maps) instead of SipHash, which showed in the publisher's profile, hashing every
/// stored id once on insert and again on every rehash as the map grows.
type ById = HashMap<Arc<str>, AABB<[f64; 2]>, foldhash::fast::RandomState>;

/// R-tree plus an id map to find the entry an update or delete replaces.
///
/// The map keeps only the envelope: with the id, it is all a removal needs to find the
/// entry in the tree, so an upsert neither clones the entry nor compares shapes.
#[derive(Debug, Default)]
pub(crate) struct SpatialIndex {
    tree: RTree<IndexEntry>,
    by_id: ById,
}

/// Selects the tree entry of one id, whose envelope is known.
struct SelectId<'a> {
    id: &'a str,
    envelope: AABB<[f64; 2]>,
}

impl SelectionFunction<IndexEntry> for SelectId<'_> {
    fn should_unpack_parent(&self, envelope: &AABB<[f64; 2]>) -> bool {
        envelope.contains_envelope(&self.envelope)
    }

    fn should_unpack_leaf(&self, leaf: &IndexEntry) -> bool {
        *leaf.id == *self.id && leaf.envelope() == self.envelope
    }
}

impl SpatialIndex {
    /// Builds the index in one go (much faster than inserting one by one).
    pub(crate) fn bulk_load(entries: Vec<IndexEntry>) -> Self {
        let mut by_id = ById::with_capacity_and_hasher(entries.len(), Default::default());
        by_id.extend(
            entries
                .iter()
                .map(|entry| (Arc::clone(&entry.id), entry.envelope())),
        );
        Self {
            tree: RTree::bulk_load(entries),
            by_id,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Inserts or replaces the entry for its id. A new id (the map had none) costs one
    /// map insert and one tree insert; only a known id searches the tree for its old
    /// entry.
    pub(crate) fn upsert(&mut self, entry: IndexEntry) {
        let envelope = entry.envelope();
        if let Some(previous) = self.by_id.insert(Arc::clone(&entry.id), envelope) {
            self.remove_entry(&entry.id, previous);
        }
        self.tree.insert(entry);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(previous) = self.by_id.remove(id) {
            self.remove_entry(id, previous);
        }
    }

    fn remove_entry(&mut self, id: &str, envelope: AABB<[f64; 2]>) {
        let removed = self
            .tree
            .remove_with_selection_function(SelectId { id, envelope });
        debug_assert!(removed.is_some(), "the id map and the tree disagree");
    }

    /// The ids matching `query`, ordered and paged; `None` for a k-nearest query, which
    /// the caller runs as growing radius queries.
    pub(crate) fn search(&self, query: &Query) -> Option<Vec<Arc<str>>> {
        let boxes = query.coarse_boxes()?;
        let candidates = boxes.iter().flat_map(|rect| {
            self.tree
                .locate_in_envelope_intersecting(aabb(rect))
                .map(|entry| (Arc::clone(&entry.id), entry.geometry()))
        });
        Some(select(query, candidates))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use geo::{LineString, Polygon};

    fn point(id: &str, x: f64, y: f64) -> IndexEntry {
        IndexEntry::new(Arc::from(id), Geometry::Point(Point::new(x, y))).unwrap()
    }

    fn square(id: &str, x: f64, y: f64) -> IndexEntry {
        let ring = LineString::from(vec![(x, y), (x + 1.0, y), (x + 1.0, y + 1.0), (x, y)]);
        IndexEntry::new(Arc::from(id), Geometry::Polygon(Polygon::new(ring, vec![]))).unwrap()
    }

    fn near(index: &SpatialIndex, lon: f64, lat: f64) -> Vec<String> {
        let pairs: Vec<(String, String)> = [("lat", lat), ("lon", lon), ("radius", 50_000.0)]
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let query = Query::from_params(&pairs).unwrap();
        let found = index.search(&query).unwrap();
        found.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn updates_and_removals_leave_one_entry_per_id() {
        let mut index = SpatialIndex::bulk_load(vec![point("a", 0.0, 0.0), square("s", 5.0, 5.0)]);
        index.upsert(point("b", 0.1, 0.1));
        assert_eq!(near(&index, 0.0, 0.0), ["a", "b"]);

        // Moving an id takes its old entry out of the tree, points and other shapes alike.
        index.upsert(point("a", 10.0, 10.0));
        index.upsert(square("s", 20.0, 20.0));
        index.upsert(point("b", 0.1, 0.1));
        assert_eq!(index.len(), 3);
        assert_eq!(index.tree.size(), 3);
        assert_eq!(near(&index, 0.0, 0.0), ["b"]);
        assert_eq!(near(&index, 10.0, 10.0), ["a"]);
        assert!(near(&index, 5.5, 5.5).is_empty());
        assert_eq!(near(&index, 20.5, 20.5), ["s"]);

        // A shape may replace a point under the same id, and the other way round.
        index.upsert(square("a", 30.0, 30.0));
        index.upsert(point("s", 40.0, 40.0));
        assert_eq!(near(&index, 30.5, 30.5), ["a"]);
        assert_eq!(near(&index, 40.0, 40.0), ["s"]);
        assert_eq!(index.tree.size(), 3);

        index.remove("a");
        index.remove("a");
        index.remove("missing");
        assert_eq!(index.len(), 2);
        assert_eq!(index.tree.size(), 2);
        assert!(near(&index, 30.5, 30.5).is_empty());
    }
}
