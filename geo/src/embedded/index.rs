//! The in-memory R-tree over document envelopes.
//!
//! Points (the common case) are kept as two floats, other shapes as a shared geometry, so
//! the exact test of a query never touches the disk.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use geo::{BoundingRect, Geometry, Point, Rect};
use rstar::{AABB, RTree, RTreeObject};

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

impl PartialEq for IndexEntry {
    /// The index holds one entry per id, so id and envelope identify an entry.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.envelope() == other.envelope()
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

/// R-tree plus an id map to find the entry an update or delete replaces.
#[derive(Debug, Default)]
pub(crate) struct SpatialIndex {
    tree: RTree<IndexEntry>,
    by_id: HashMap<Arc<str>, IndexEntry>,
}

impl SpatialIndex {
    /// Builds the index in one go (much faster than inserting one by one).
    pub(crate) fn bulk_load(entries: Vec<IndexEntry>) -> Self {
        let by_id = entries
            .iter()
            .map(|entry| (Arc::clone(&entry.id), entry.clone()))
            .collect();
        Self {
            tree: RTree::bulk_load(entries),
            by_id,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Inserts or replaces the entry for its id.
    pub(crate) fn upsert(&mut self, entry: IndexEntry) {
        if let Some(previous) = self.by_id.insert(Arc::clone(&entry.id), entry.clone()) {
            self.tree.remove(&previous);
        }
        self.tree.insert(entry);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(previous) = self.by_id.remove(id) {
            self.tree.remove(&previous);
        }
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
