//! The TPC-H tables and their generators.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// A stream of generated batches.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// One of the eight TPC-H tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpchTable {
    /// `region` (5 rows).
    Region,
    /// `nation` (25 rows).
    Nation,
    /// `supplier` (10,000 × SF).
    Supplier,
    /// `customer` (150,000 × SF).
    Customer,
    /// `part` (200,000 × SF).
    Part,
    /// `partsupp` (800,000 × SF).
    PartSupp,
    /// `orders` (1,500,000 × SF).
    Orders,
    /// `lineitem` (about 6,000,000 × SF).
    LineItem,
}

impl TpchTable {
    /// All tables, smallest first.
    pub const ALL: [TpchTable; 8] = [
        TpchTable::Region,
        TpchTable::Nation,
        TpchTable::Supplier,
        TpchTable::Customer,
        TpchTable::Part,
        TpchTable::PartSupp,
        TpchTable::Orders,
        TpchTable::LineItem,
    ];

    /// The table's SQL name.
    pub fn name(self) -> &'static str {
        match self {
            TpchTable::Region => "region",
            TpchTable::Nation => "nation",
            TpchTable::Supplier => "supplier",
            TpchTable::Customer => "customer",
            TpchTable::Part => "part",
            TpchTable::PartSupp => "partsupp",
            TpchTable::Orders => "orders",
            TpchTable::LineItem => "lineitem",
        }
    }

    /// The table named `name`, if it is a TPC-H table.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The Arrow schema of the generated rows.
    pub fn schema(self) -> SchemaRef {
        match self {
            TpchTable::Region => RegionArrow::schema_ref(),
            TpchTable::Nation => NationArrow::schema_ref(),
            TpchTable::Supplier => SupplierArrow::schema_ref(),
            TpchTable::Customer => CustomerArrow::schema_ref(),
            TpchTable::Part => PartArrow::schema_ref(),
            TpchTable::PartSupp => PartSuppArrow::schema_ref(),
            TpchTable::Orders => OrderArrow::schema_ref(),
            TpchTable::LineItem => LineItemArrow::schema_ref(),
        }
    }

    /// Whether the generator can split the table into parts; `nation` and `region` are
    /// fixed lists.
    pub fn splittable(self) -> bool {
        !matches!(self, TpchTable::Region | TpchTable::Nation)
    }

    /// Rows in part `part` (1-based) of `parts`: exact for every table but `lineitem`, whose
    /// 1 to 7 lines per order are only known once generated (about 4 per order).
    pub fn row_count(self, scale: f64, part: i32, parts: i32) -> (usize, bool) {
        let exact = |n: i64| (usize::try_from(n).unwrap_or(0), true);
        match self {
            TpchTable::Region => exact(5),
            TpchTable::Nation => exact(25),
            TpchTable::Supplier => {
                exact(SupplierGenerator::calculate_row_count(scale, part, parts))
            }
            TpchTable::Customer => {
                exact(CustomerGenerator::calculate_row_count(scale, part, parts))
            }
            TpchTable::Part => exact(PartGenerator::calculate_row_count(scale, part, parts)),
            // The generator counts parts; each part has four suppliers.
            TpchTable::PartSupp => {
                exact(4 * PartSuppGenerator::calculate_row_count(scale, part, parts))
            }
            TpchTable::Orders => exact(OrderGenerator::calculate_row_count(scale, part, parts)),
            TpchTable::LineItem => {
                let orders = OrderGenerator::calculate_row_count(scale, part, parts);
                (usize::try_from(orders * 4).unwrap_or(0), false)
            }
        }
    }

    /// Calls `row` with each row of part `part` (1-based) of `parts` in TPC-H's `.tbl` text
    /// form (`|` after every field), for loading the data into other systems.
    pub fn for_each_row(
        self,
        scale: f64,
        part: i32,
        parts: i32,
        mut row: impl FnMut(&dyn std::fmt::Display),
    ) {
        match self {
            TpchTable::Region => RegionGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::Nation => NationGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::Supplier => SupplierGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::Customer => CustomerGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::Part => PartGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::PartSupp => PartSuppGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::Orders => OrderGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
            TpchTable::LineItem => LineItemGenerator::new(scale, part, parts)
                .iter()
                .for_each(|r| row(&r)),
        }
    }

    /// The primary-key columns TPC-H defines.
    pub fn primary_key(self) -> &'static [&'static str] {
        match self {
            TpchTable::Region => &["r_regionkey"],
            TpchTable::Nation => &["n_nationkey"],
            TpchTable::Supplier => &["s_suppkey"],
            TpchTable::Customer => &["c_custkey"],
            TpchTable::Part => &["p_partkey"],
            TpchTable::PartSupp => &["ps_partkey", "ps_suppkey"],
            TpchTable::Orders => &["o_orderkey"],
            TpchTable::LineItem => &["l_orderkey", "l_linenumber"],
        }
    }

    /// Generates part `part` (1-based) of `parts` in batches of `batch_size` rows.
    pub fn generate(self, scale: f64, part: i32, parts: i32, batch_size: usize) -> Batches {
        match self {
            TpchTable::Region => Box::new(
                RegionArrow::new(RegionGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Nation => Box::new(
                NationArrow::new(NationGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Supplier => Box::new(
                SupplierArrow::new(SupplierGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Customer => Box::new(
                CustomerArrow::new(CustomerGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Part => Box::new(
                PartArrow::new(PartGenerator::new(scale, part, parts)).with_batch_size(batch_size),
            ),
            TpchTable::PartSupp => Box::new(
                PartSuppArrow::new(PartSuppGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Orders => Box::new(
                OrderArrow::new(OrderGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::LineItem => Box::new(
                LineItemArrow::new(LineItemGenerator::new(scale, part, parts))
                    .with_batch_size(batch_size),
            ),
        }
    }
}
