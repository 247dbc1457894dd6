//! The query model, following Cloudant Geo's parameters.
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `bbox=minLon,minLat,maxLon,maxLat` | documents whose geometry relates to the box |
//! | `lat`, `lon`, `radius` | documents within `radius` metres (haversine) of the point |
//! | `g=<WKT>` | documents whose geometry relates to the WKT shape |
//! | `relation` | `intersects` (default), `contains`, `contains_properly`, `covers`, `covered_by`, `within`, `touches`, `crosses`, `overlaps` |
//! | `nearest=true` | order by distance to `lat`/`lon`, or to the centre of the box/shape; with `lat`/`lon` and no other filter it is a k-nearest query over the whole store |
//! | `limit` | 1..=1000, default 25 |
//! | `skip` | 0..=100000, default 0 |
//! | `include_docs` | accepted for Cloudant compatibility; documents are always returned whole |
//!
//! Relations read as in Cloudant: *query geometry* `relation` *document geometry*, so
//! `relation=contains` returns the documents that lie inside the query shape.
//! `disjoint` is refused: it cannot use the spatial index and would read every document.
//! Without `nearest`, results are ordered by document id.

use std::str::FromStr;

use geo::{
    BoundingRect, Centroid, Closest, Distance, Geometry, Haversine, HaversineClosestPoint,
    Intersects, Point, Rect, Relate, coord,
};
use serde::Deserialize;

use crate::error::{GeoError, GeoResult};
use crate::geometry::validate;

/// Results returned when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 25;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Largest accepted `skip`.
pub const MAX_SKIP: usize = 100_000;
/// Largest accepted `radius`, in metres: half the Earth's circumference, which covers it all.
pub const MAX_RADIUS_METRES: f64 = 20_015_100.0;
/// Mean Earth radius used by haversine distances, in metres (same as `geo::Haversine`).
pub(crate) const EARTH_RADIUS_METRES: f64 = 6_371_008.8;

/// How the query geometry must relate to a document's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// They share at least one point.
    #[default]
    Intersects,
    /// The document lies inside the query geometry (not only on its boundary).
    Contains,
    /// The document lies inside the query geometry and does not touch its boundary.
    ContainsProperly,
    /// No point of the document lies outside the query geometry.
    Covers,
    /// No point of the query geometry lies outside the document.
    CoveredBy,
    /// The query geometry lies inside the document.
    Within,
    /// They touch on their boundaries only.
    Touches,
    /// They cross (e.g. a line through a polygon).
    Crosses,
    /// They overlap and have the same dimension.
    Overlaps,
}

impl FromStr for Relation {
    type Err = GeoError;

    fn from_str(text: &str) -> GeoResult<Self> {
        Ok(match text {
            "intersects" => Self::Intersects,
            "contains" => Self::Contains,
            "contains_properly" => Self::ContainsProperly,
            "covers" => Self::Covers,
            "covered_by" => Self::CoveredBy,
            "within" => Self::Within,
            "touches" => Self::Touches,
            "crosses" => Self::Crosses,
            "overlaps" => Self::Overlaps,
            "disjoint" => {
                return Err(GeoError::query(
                    "relation",
                    "`disjoint` is not supported: it cannot use the spatial index",
                ));
            }
            other => {
                return Err(GeoError::query(
                    "relation",
                    format!("unknown relation `{other}`"),
                ));
            }
        })
    }
}

/// The spatial part of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `bbox=minLon,minLat,maxLon,maxLat`.
    BBox(Rect<f64>),
    /// `lat`, `lon`, `radius` (metres).
    Radius {
        /// The centre.
        center: Point<f64>,
        /// Radius in metres.
        metres: f64,
    },
    /// `g=<WKT>`.
    Shape(Geometry<f64>),
    /// `lat`, `lon`, `nearest=true` without a radius: the closest documents anywhere.
    Nearest {
        /// The point distances are measured from.
        center: Point<f64>,
    },
}

/// The raw parameters, before validation; also the JSON form of a query
/// (`{"lat": 41.8, "lon": -87.6, "radius": 500, "nearest": true}`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// `[minLon, minLat, maxLon, maxLat]` or the string `"minLon,minLat,maxLon,maxLat"`.
    pub bbox: Option<BBoxParam>,
    /// Latitude of the centre, degrees.
    pub lat: Option<f64>,
    /// Longitude of the centre, degrees.
    pub lon: Option<f64>,
    /// Radius in metres.
    pub radius: Option<f64>,
    /// A WKT shape.
    pub g: Option<String>,
    /// See [`Relation`].
    pub relation: Option<String>,
    /// Order by distance.
    pub nearest: Option<bool>,
    /// Maximum number of results.
    pub limit: Option<u64>,
    /// Number of results to skip.
    pub skip: Option<u64>,
    /// Accepted for Cloudant compatibility.
    pub include_docs: Option<bool>,
}

/// The two accepted JSON forms of `bbox`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BBoxParam {
    /// `[minLon, minLat, maxLon, maxLat]`.
    Numbers(Vec<f64>),
    /// `"minLon,minLat,maxLon,maxLat"`.
    Text(String),
}

/// A validated geo query. Build it with [`Query::from_params`], from JSON through serde,
/// or with [`Query::new`] from a [`Filter`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "QueryParams")]
pub struct Query {
    filter: Filter,
    relation: Relation,
    nearest: bool,
    origin: Option<Point<f64>>,
    limit: usize,
    skip: usize,
    include_docs: bool,
}

impl Query {
    /// A query with default relation, limit and skip. Prefer [`Query::try_from`] on
    /// [`QueryParams`] for outside input: this constructor trusts its argument.
    pub fn new(filter: Filter) -> Self {
        let nearest = matches!(filter, Filter::Nearest { .. });
        Self {
            filter,
            relation: Relation::Intersects,
            nearest,
            origin: None,
            limit: DEFAULT_LIMIT,
            skip: 0,
            include_docs: true,
        }
    }

    /// Parses an HTTP query string's pairs. Unknown parameters, repeated parameters and bad
    /// values are refused with [`GeoError::InvalidQuery`] naming the parameter.
    pub fn from_params(pairs: &[(String, String)]) -> GeoResult<Self> {
        let mut params = QueryParams::default();
        for (name, value) in pairs {
            let value = value.trim();
            let repeated = match name.as_str() {
                "bbox" => params
                    .bbox
                    .replace(BBoxParam::Text(value.to_owned()))
                    .is_some(),
                "lat" => params.lat.replace(parse_float(name, value)?).is_some(),
                "lon" => params.lon.replace(parse_float(name, value)?).is_some(),
                "radius" => params.radius.replace(parse_float(name, value)?).is_some(),
                "g" => params.g.replace(value.to_owned()).is_some(),
                "relation" => params.relation.replace(value.to_owned()).is_some(),
                "nearest" => params.nearest.replace(parse_bool(name, value)?).is_some(),
                "limit" => params.limit.replace(parse_count(name, value)?).is_some(),
                "skip" => params.skip.replace(parse_count(name, value)?).is_some(),
                "include_docs" => params
                    .include_docs
                    .replace(parse_bool(name, value)?)
                    .is_some(),
                _ => return Err(GeoError::query(name.as_str(), "unknown parameter")),
            };
            if repeated {
                return Err(GeoError::query(name.as_str(), "given more than once"));
            }
        }
        Self::try_from(params)
    }

    /// The spatial filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }
    /// The relation applied to `bbox` and `g` filters.
    pub fn relation(&self) -> Relation {
        self.relation
    }
    /// Whether results are ordered by distance.
    pub fn nearest(&self) -> bool {
        self.nearest
    }
    /// Maximum number of results.
    pub fn limit(&self) -> usize {
        self.limit
    }
    /// Number of matching results skipped.
    pub fn skip(&self) -> usize {
        self.skip
    }
    /// The `include_docs` flag as given (default `true`); backends always return whole documents.
    pub fn include_docs(&self) -> bool {
        self.include_docs
    }

    /// Sets the limit (clamped to 1..=[`MAX_LIMIT`]).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, MAX_LIMIT);
        self
    }
    /// Sets skip (clamped to [`MAX_SKIP`]).
    pub fn with_skip(mut self, skip: usize) -> Self {
        self.skip = skip.min(MAX_SKIP);
        self
    }
    /// Sets the relation. Radius and nearest filters only support `intersects`.
    pub fn with_relation(mut self, relation: Relation) -> GeoResult<Self> {
        check_relation(&self.filter, relation)?;
        self.relation = relation;
        Ok(self)
    }
    /// Orders the results by distance.
    pub fn with_nearest(mut self, nearest: bool) -> Self {
        self.nearest = nearest || matches!(self.filter, Filter::Nearest { .. });
        self
    }

    /// The point distances are measured from when ordering by distance.
    pub(crate) fn distance_origin(&self) -> Option<Point<f64>> {
        match &self.filter {
            Filter::Radius { center, .. } | Filter::Nearest { center } => Some(*center),
            Filter::BBox(rect) => self.origin.or_else(|| Some(rect.center().into())),
            Filter::Shape(shape) => self.origin.or_else(|| shape.centroid()),
        }
    }

    /// Boxes (in lon/lat degrees) that together cover every matching geometry's envelope.
    /// `None` for [`Filter::Nearest`], which has no bound; see [`Query::radius_step`].
    pub(crate) fn coarse_boxes(&self) -> Option<Vec<Rect<f64>>> {
        match &self.filter {
            Filter::BBox(rect) => Some(vec![*rect]),
            Filter::Radius { center, metres } => Some(radius_boxes(*center, *metres)),
            Filter::Shape(shape) => Some(shape.bounding_rect().into_iter().collect()),
            Filter::Nearest { .. } => None,
        }
    }

    /// The exact test of a document geometry against this query.
    pub(crate) fn matches(&self, geometry: &Geometry<f64>) -> bool {
        match &self.filter {
            Filter::Radius { center, metres } => distance_metres(geometry, *center) <= *metres,
            Filter::Nearest { .. } => true,
            Filter::BBox(rect) => match (self.relation, geometry) {
                (Relation::Intersects, Geometry::Point(point)) => rect.intersects(point),
                (relation, _) => relate(relation, &Geometry::Rect(*rect), geometry),
            },
            Filter::Shape(shape) => relate(self.relation, shape, geometry),
        }
    }

    /// For a k-nearest query, the same query bounded by a radius, without skip and with
    /// `limit = skip + limit`, used by backends that search in growing circles until
    /// they have enough results. `None` for other filters.
    pub(crate) fn radius_step(&self, metres: f64) -> Option<Self> {
        let Filter::Nearest { center } = self.filter else {
            return None;
        };
        let mut bounded = self.clone();
        bounded.filter = Filter::Radius {
            center,
            metres: metres.min(MAX_RADIUS_METRES),
        };
        bounded.limit = self.skip + self.limit;
        bounded.skip = 0;
        Some(bounded)
    }
}

fn relate(relation: Relation, query: &Geometry<f64>, document: &Geometry<f64>) -> bool {
    if relation == Relation::Intersects {
        return query.intersects(document);
    }
    let matrix = query.relate(document);
    match relation {
        Relation::Intersects => matrix.is_intersects(),
        Relation::Contains => matrix.is_contains(),
        Relation::ContainsProperly => matrix.is_contains_properly(),
        Relation::Covers => matrix.is_covers(),
        Relation::CoveredBy => matrix.is_coveredby(),
        Relation::Within => matrix.is_within(),
        Relation::Touches => matrix.is_touches(),
        Relation::Crosses => matrix.is_crosses(),
        Relation::Overlaps => matrix.is_overlaps(),
    }
}

/// Shortest haversine distance in metres from `point` to `geometry` (0 when it is inside).
pub(crate) fn distance_metres(geometry: &Geometry<f64>, point: Point<f64>) -> f64 {
    if let Geometry::Point(other) = geometry {
        return Haversine.distance(*other, point);
    }
    if geometry.intersects(&point) {
        return 0.0;
    }
    match geometry.haversine_closest_point(&point) {
        Closest::Intersection(_) => 0.0,
        Closest::SinglePoint(closest) => Haversine.distance(closest, point),
        Closest::Indeterminate => geometry.centroid().map_or(f64::INFINITY, |centroid| {
            Haversine.distance(centroid, point)
        }),
    }
}

/// Lon/lat boxes covering the circle of `metres` around `center`: one box, two when it
/// crosses the antimeridian, a full-longitude band when it covers a pole.
pub(crate) fn radius_boxes(center: Point<f64>, metres: f64) -> Vec<Rect<f64>> {
    // A tiny margin keeps points exactly on the circle inside despite rounding.
    const MARGIN_DEGREES: f64 = 1e-7;
    let angular = metres / EARTH_RADIUS_METRES;
    let delta_lat = angular.to_degrees() + MARGIN_DEGREES;
    let (lon, lat) = (center.x(), center.y());
    let min_lat = (lat - delta_lat).max(-90.0);
    let max_lat = (lat + delta_lat).min(90.0);
    if lat + delta_lat >= 90.0 || lat - delta_lat <= -90.0 || angular >= std::f64::consts::PI {
        return vec![rect(-180.0, min_lat, 180.0, max_lat)];
    }
    let ratio = angular.sin() / lat.to_radians().cos();
    if ratio >= 1.0 {
        return vec![rect(-180.0, min_lat, 180.0, max_lat)];
    }
    let delta_lon = ratio.asin().to_degrees() + MARGIN_DEGREES;
    let (west, east) = (lon - delta_lon, lon + delta_lon);
    if east - west >= 360.0 {
        vec![rect(-180.0, min_lat, 180.0, max_lat)]
    } else if west < -180.0 {
        vec![
            rect(-180.0, min_lat, east, max_lat),
            rect(west + 360.0, min_lat, 180.0, max_lat),
        ]
    } else if east > 180.0 {
        vec![
            rect(west, min_lat, 180.0, max_lat),
            rect(-180.0, min_lat, east - 360.0, max_lat),
        ]
    } else {
        vec![rect(west, min_lat, east, max_lat)]
    }
}

fn rect(min_lon: f64, min_lat: f64, max_lon: f64, max_lat: f64) -> Rect<f64> {
    Rect::new(
        coord! { x: min_lon, y: min_lat },
        coord! { x: max_lon, y: max_lat },
    )
}

fn check_relation(filter: &Filter, relation: Relation) -> GeoResult<()> {
    match filter {
        Filter::Radius { .. } | Filter::Nearest { .. } if relation != Relation::Intersects => {
            Err(GeoError::query(
                "relation",
                "only `intersects` is supported with lat/lon/radius",
            ))
        }
        _ => Ok(()),
    }
}

fn parse_float(param: &str, text: &str) -> GeoResult<f64> {
    let value: f64 = text
        .parse()
        .map_err(|_| GeoError::query(param, format!("`{text}` is not a number")))?;
    if !value.is_finite() {
        return Err(GeoError::query(param, "must be a finite number"));
    }
    Ok(value)
}

fn parse_bool(param: &str, text: &str) -> GeoResult<bool> {
    match text {
        "true" | "" => Ok(true),
        "false" => Ok(false),
        other => Err(GeoError::query(
            param,
            format!("`{other}` is not `true` or `false`"),
        )),
    }
}

fn parse_count(param: &str, text: &str) -> GeoResult<u64> {
    text.parse()
        .map_err(|_| GeoError::query(param, format!("`{text}` is not a non-negative integer")))
}

fn check_latitude(param: &str, value: f64) -> GeoResult<f64> {
    if value.is_finite() && (-90.0..=90.0).contains(&value) {
        Ok(value)
    } else {
        Err(GeoError::query(
            param,
            format!("latitude {value} is outside [-90, 90]"),
        ))
    }
}

fn check_longitude(param: &str, value: f64) -> GeoResult<f64> {
    if value.is_finite() && (-180.0..=180.0).contains(&value) {
        Ok(value)
    } else {
        Err(GeoError::query(
            param,
            format!("longitude {value} is outside [-180, 180]"),
        ))
    }
}

fn parse_bbox(bbox: &BBoxParam) -> GeoResult<Rect<f64>> {
    let numbers = match bbox {
        BBoxParam::Numbers(numbers) => numbers.clone(),
        BBoxParam::Text(text) => text
            .split(',')
            .map(|part| parse_float("bbox", part.trim()))
            .collect::<GeoResult<Vec<f64>>>()?,
    };
    let [min_lon, min_lat, max_lon, max_lat] = numbers[..] else {
        return Err(GeoError::query(
            "bbox",
            format!(
                "expected 4 numbers minLon,minLat,maxLon,maxLat, found {}",
                numbers.len()
            ),
        ));
    };
    check_longitude("bbox", min_lon)?;
    check_latitude("bbox", min_lat)?;
    check_longitude("bbox", max_lon)?;
    check_latitude("bbox", max_lat)?;
    if min_lat > max_lat {
        return Err(GeoError::query("bbox", "minLat is greater than maxLat"));
    }
    if min_lon > max_lon {
        return Err(GeoError::query(
            "bbox",
            "minLon is greater than maxLon (boxes across the antimeridian are not supported; send two queries)",
        ));
    }
    Ok(rect(min_lon, min_lat, max_lon, max_lat))
}

fn parse_wkt(text: &str) -> GeoResult<Geometry<f64>> {
    let parsed = wkt::Wkt::<f64>::from_str(text)
        .map_err(|reason| GeoError::query("g", format!("not valid WKT: {reason}")))?;
    check_wkt_rings(&parsed)?;
    let geometry = Geometry::<f64>::try_from(parsed)
        .map_err(|error| GeoError::query("g", format!("unsupported WKT: {error}")))?;
    validate(&geometry, "g").map_err(|error| match error {
        GeoError::InvalidGeometry { reason, .. } => GeoError::query("g", reason),
        other => other,
    })?;
    if geometry.bounding_rect().is_none() {
        return Err(GeoError::query("g", "the shape is empty"));
    }
    Ok(geometry)
}

/// geo closes polygon rings silently; the WKT text must already be closed.
fn check_wkt_rings(parsed: &wkt::Wkt<f64>) -> GeoResult<()> {
    let check_polygon = |polygon: &wkt::types::Polygon<f64>| -> GeoResult<()> {
        for ring in polygon.rings() {
            let coords = ring.coords();
            if coords.len() < 4 {
                return Err(GeoError::query(
                    "g",
                    format!(
                        "a polygon ring needs at least 4 positions, found {}",
                        coords.len()
                    ),
                ));
            }
            let (Some(first), Some(last)) = (coords.first(), coords.last()) else {
                continue;
            };
            if first.x != last.x || first.y != last.y {
                return Err(GeoError::query(
                    "g",
                    "a polygon ring must be closed (first position equal to the last)",
                ));
            }
        }
        Ok(())
    };
    match parsed {
        wkt::Wkt::Polygon(polygon) => check_polygon(polygon),
        wkt::Wkt::MultiPolygon(polygons) => polygons.polygons().iter().try_for_each(check_polygon),
        wkt::Wkt::GeometryCollection(collection) => {
            collection.geometries().iter().try_for_each(check_wkt_rings)
        }
        _ => Ok(()),
    }
}

impl TryFrom<QueryParams> for Query {
    type Error = GeoError;

    fn try_from(params: QueryParams) -> GeoResult<Self> {
        let center = match (params.lat, params.lon) {
            (Some(lat), Some(lon)) => Some(Point::new(
                check_longitude("lon", lon)?,
                check_latitude("lat", lat)?,
            )),
            (Some(_), None) => return Err(GeoError::query("lon", "required with lat")),
            (None, Some(_)) => return Err(GeoError::query("lat", "required with lon")),
            (None, None) => None,
        };
        let nearest = params.nearest.unwrap_or(false);
        let bbox = params.bbox.as_ref().map(parse_bbox).transpose()?;
        let shape = params.g.as_deref().map(parse_wkt).transpose()?;
        let radius = params
            .radius
            .map(|metres| {
                if !metres.is_finite() || metres <= 0.0 || metres > MAX_RADIUS_METRES {
                    return Err(GeoError::query(
                        "radius",
                        format!("must be a number of metres in (0, {MAX_RADIUS_METRES}]"),
                    ));
                }
                center
                    .map(|center| Filter::Radius { center, metres })
                    .ok_or_else(|| GeoError::query("radius", "requires lat and lon"))
            })
            .transpose()?;

        let mut filters = Vec::new();
        if let Some(rect) = bbox {
            filters.push(("bbox", Filter::BBox(rect)));
        }
        if let Some(filter) = radius {
            filters.push(("radius", filter));
        }
        if let Some(shape) = shape {
            filters.push(("g", Filter::Shape(shape)));
        }
        if filters.len() > 1 {
            let names: Vec<&str> = filters.iter().map(|(name, _)| *name).collect();
            return Err(GeoError::query(
                names.last().copied().unwrap_or("g"),
                format!(
                    "only one of bbox, radius and g may be given, found {}",
                    names.join(", ")
                ),
            ));
        }
        let filter = match (filters.pop(), center) {
            (Some((_, filter)), _) => filter,
            (None, Some(center)) if nearest => Filter::Nearest { center },
            (None, Some(_)) => {
                return Err(GeoError::query(
                    "radius",
                    "required with lat/lon unless nearest=true",
                ));
            }
            (None, None) => {
                return Err(GeoError::query(
                    "bbox",
                    "a spatial filter is required: bbox, lat+lon+radius, g, or lat+lon+nearest=true",
                ));
            }
        };

        let relation = params
            .relation
            .as_deref()
            .map(Relation::from_str)
            .transpose()?
            .unwrap_or_default();
        check_relation(&filter, relation)?;

        let limit = match params.limit {
            None => DEFAULT_LIMIT,
            Some(limit) if (1..=MAX_LIMIT as u64).contains(&limit) => limit as usize,
            Some(_) => {
                return Err(GeoError::query(
                    "limit",
                    format!("must be in 1..={MAX_LIMIT}"),
                ));
            }
        };
        let skip = match params.skip {
            None => 0,
            Some(skip) if skip <= MAX_SKIP as u64 => skip as usize,
            Some(_) => {
                return Err(GeoError::query(
                    "skip",
                    format!("must be at most {MAX_SKIP}"),
                ));
            }
        };

        Ok(Self {
            origin: if matches!(filter, Filter::BBox(_) | Filter::Shape(_)) {
                center
            } else {
                None
            },
            nearest: nearest || matches!(filter, Filter::Nearest { .. }),
            filter,
            relation,
            limit,
            skip,
            include_docs: params.include_docs.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn param_of(result: GeoResult<Query>) -> String {
        match result {
            Err(GeoError::InvalidQuery { param, .. }) => param,
            other => panic!("expected InvalidQuery, got {other:?}"),
        }
    }

    #[test]
    fn parses_each_filter_kind() {
        let bbox =
            Query::from_params(&pairs(&[("bbox", "-88,41,-87,42"), ("limit", "5")])).unwrap();
        assert!(matches!(bbox.filter(), Filter::BBox(_)));
        assert_eq!(bbox.limit(), 5);
        let radius = Query::from_params(&pairs(&[
            ("lat", "41.8"),
            ("lon", "-87.6"),
            ("radius", "500"),
            ("nearest", "true"),
        ]))
        .unwrap();
        assert!(matches!(radius.filter(), Filter::Radius { metres, .. } if *metres == 500.0));
        assert!(radius.nearest());
        let shape = Query::from_params(&pairs(&[
            ("g", "POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))"),
            ("relation", "contains"),
            ("include_docs", "true"),
            ("skip", "3"),
        ]))
        .unwrap();
        assert_eq!(shape.relation(), Relation::Contains);
        assert_eq!(shape.skip(), 3);
        assert_eq!(shape.limit(), DEFAULT_LIMIT);
        let knn =
            Query::from_params(&pairs(&[("lat", "1"), ("lon", "2"), ("nearest", "true")])).unwrap();
        assert!(matches!(knn.filter(), Filter::Nearest { .. }));
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("lat", "91"), ("lon", "0"), ("radius", "1")], "lat"),
            (&[("lat", "NaN"), ("lon", "0"), ("radius", "1")], "lat"),
            (&[("lat", "1"), ("lon", "inf"), ("radius", "1")], "lon"),
            (&[("lat", "north"), ("lon", "0"), ("radius", "1")], "lat"),
            (&[("lat", "1"), ("lon", "0"), ("radius", "-5")], "radius"),
            (&[("lat", "1"), ("lon", "0")], "radius"),
            (&[("lat", "1"), ("radius", "5")], "lon"),
            (&[("radius", "5")], "radius"),
            (&[("bbox", "1,2,3")], "bbox"),
            (&[("bbox", "3,2,1,4")], "bbox"),
            (&[("bbox", "0,0,1,100")], "bbox"),
            (&[("g", "POLYGON((0 0, 1 0, 1 1, 0 1))")], "g"),
            (&[("g", "POLYGON((0 0, 1 0, 0 0))")], "g"),
            (&[("g", "POINT(0 95)")], "g"),
            (&[("g", "not wkt")], "g"),
            (&[("g", "POINT(1 1)"), ("relation", "disjoint")], "relation"),
            (&[("g", "POINT(1 1)"), ("relation", "near")], "relation"),
            (
                &[
                    ("lat", "1"),
                    ("lon", "0"),
                    ("radius", "5"),
                    ("relation", "within"),
                ],
                "relation",
            ),
            (&[("g", "POINT(1 1)"), ("limit", "0")], "limit"),
            (&[("g", "POINT(1 1)"), ("limit", "5000")], "limit"),
            (&[("g", "POINT(1 1)"), ("limit", "-1")], "limit"),
            (&[("g", "POINT(1 1)"), ("skip", "x")], "skip"),
            (&[("g", "POINT(1 1)"), ("nearest", "yes")], "nearest"),
            (&[("g", "POINT(1 1)"), ("stale", "ok")], "stale"),
            (&[("g", "POINT(1 1)"), ("g", "POINT(2 2)")], "g"),
            (&[("g", "POINT(1 1)"), ("bbox", "0,0,1,1")], "g"),
            (&[], "bbox"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                param_of(Query::from_params(&pairs(input))),
                *expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn deserializes_from_json() {
        let query: Query =
            serde_json::from_value(json!({"bbox": [-88, 41, -87, 42], "nearest": true})).unwrap();
        assert!(matches!(query.filter(), Filter::BBox(_)));
        let query: Query = serde_json::from_value(json!({"bbox": "-88,41,-87,42"})).unwrap();
        assert!(matches!(query.filter(), Filter::BBox(_)));
        let error =
            serde_json::from_value::<Query>(json!({"lat": 91, "lon": 0, "radius": 5})).unwrap_err();
        assert!(error.to_string().contains("`lat`"), "{error}");
        assert!(serde_json::from_value::<Query>(json!({"g": "POINT(1 1)", "extra": 1})).is_err());
        assert!(
            serde_json::from_value::<Query>(json!({"lat": "1", "lon": 0, "radius": 5})).is_err()
        );
    }

    #[test]
    fn radius_boxes_cover_the_circle() {
        let boxes = radius_boxes(Point::new(0.0, 0.0), 111_195.0);
        assert_eq!(boxes.len(), 1);
        assert!((boxes[0].max().y - 1.0).abs() < 1e-3);
        let split = radius_boxes(Point::new(179.9, 0.0), 50_000.0);
        assert_eq!(split.len(), 2);
        let polar = radius_boxes(Point::new(0.0, 89.9), 50_000.0);
        assert_eq!(polar.len(), 1);
        assert_eq!(polar[0].min().x, -180.0);
    }

    #[test]
    fn relations_follow_query_relation_document() {
        let square = parse_wkt("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))").unwrap();
        let inside = Geometry::Point(Point::new(5.0, 5.0));
        let query = Query::new(Filter::Shape(square.clone()));
        assert!(query.matches(&inside));
        let contains = query.clone().with_relation(Relation::Contains).unwrap();
        assert!(contains.matches(&inside));
        assert!(!contains.matches(&Geometry::Point(Point::new(11.0, 5.0))));
        let within = query.with_relation(Relation::Within).unwrap();
        assert!(!within.matches(&inside));
        let big = parse_wkt("POLYGON((-1 -1, 11 -1, 11 11, -1 11, -1 -1))").unwrap();
        assert!(within.matches(&big));
    }
}
