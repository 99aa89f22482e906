-- Experiment readout: sufficient statistics per experiment and variant.
--
-- Input relations (see docs/analysis.md for how to register them on DuckDB, Spark and Trino):
--   assignments      the exposures table; columns missing from old files read as null
--   conversions      the conversions table
--   experiments      one row per (config_version, experiment, variant, node)
--   readout_params   one row: conversion_name, experiment (null = all), window_end (null = no
--                    end), conversion_window (an interval; null = no limit)
--
-- Rules (docs/analysis.md explains each):
--   - Every event_id counts once (clients retrying after the dedup window repeat rows).
--   - Synthetic (load-test) rows are dropped.
--   - The unit is unit_id (user_id in files written before the unit columns existed). Exposure
--     rows whose unit_attribute is not a hash attribute the experiment was configured with are
--     dropped: they name another kind of unit (say a user in a device-randomized experiment).
--   - A unit's variant is that of its first exposure. Units exposed to more than one variant
--     are excluded from the analysis and counted, under their first variant.
--   - Conversions are keyed by user_id and reach a unit through the user_ids on the unit's
--     exposure rows. One counts for a unit when its ts >= the unit's first exposure (and within
--     conversion_window of it); each conversion event counts once per unit.
--   - Expected units: each unit contributes the weights of the config version it was drawn
--     under: its first exposure's config_version when the experiments table has it, else the
--     latest version first served at or before the exposure, else the earliest version.
--
-- Output: one row per experiment and variant (every variant of every config version, also with
-- no units), ordered by experiment and variant_index.
--
-- Portable SQL: CTEs, window functions, CASE, COALESCE; no engine-specific functions.

WITH params AS (
    SELECT conversion_name, experiment AS only_experiment, window_end, conversion_window
    FROM readout_params
),

-- Exposure rows, numbered within each event_id: copy_no > 1 is a repeat.
exposure_rows AS (
    SELECT a.event_id, a.ts, a.received_at, a.experiment, a.variant, a.user_id,
           COALESCE(a.unit_attribute, 'user_id') AS unit_attribute,
           COALESCE(a.unit_id, a.user_id) AS unit_id,
           a.config_version,
           COALESCE(a.synthetic, FALSE) AS synthetic,
           ROW_NUMBER() OVER (PARTITION BY a.event_id ORDER BY a.received_at, a.ts) AS copy_no
    FROM assignments a
    CROSS JOIN params p
    WHERE (p.only_experiment IS NULL OR a.experiment = p.only_experiment)
      AND (p.window_end IS NULL OR a.ts < p.window_end)
),

-- The experiments table: several nodes write the same version; the earliest one counts.
version_rows AS (
    SELECT config_version, experiment, variant,
           MIN(variant_index) AS variant_index, MIN(weight) AS weight,
           MIN(hash_attribute) AS hash_attribute, MIN(status) AS status
    FROM experiments
    GROUP BY config_version, experiment, variant
),
version_served AS (
    SELECT config_version, MIN(first_served_at) AS served_from
    FROM experiments
    GROUP BY config_version
),
experiment_versions AS (
    SELECT DISTINCT r.config_version, r.experiment, s.served_from
    FROM version_rows r
    JOIN version_served s ON s.config_version = r.config_version
),
configured AS (
    SELECT DISTINCT experiment FROM version_rows
),
hash_attributes AS (
    SELECT DISTINCT experiment, hash_attribute FROM version_rows
),

-- Why each exposure row is used or not.
classified AS (
    SELECT e.*,
           CASE WHEN e.copy_no > 1 THEN 'duplicate'
                WHEN e.synthetic THEN 'synthetic'
                WHEN c.experiment IS NOT NULL AND h.experiment IS NULL THEN 'wrong_unit'
                ELSE 'used'
           END AS row_use
    FROM exposure_rows e
    LEFT JOIN configured c ON c.experiment = e.experiment
    LEFT JOIN hash_attributes h
           ON h.experiment = e.experiment AND h.hash_attribute = e.unit_attribute
),
exposures AS (
    SELECT * FROM classified WHERE row_use = 'used'
),

-- One row per (experiment, unit): the first exposure, and whether it saw several variants.
first_exposures AS (
    SELECT experiment, unit_id, variant, ts AS first_ts, config_version
    FROM (
        SELECT experiment, unit_id, variant, ts, config_version,
               ROW_NUMBER() OVER (PARTITION BY experiment, unit_id
                                  ORDER BY ts, received_at, event_id) AS n
        FROM exposures
    ) ranked
    WHERE n = 1
),
unit_variant_counts AS (
    SELECT experiment, unit_id, COUNT(DISTINCT variant) AS variants
    FROM exposures
    GROUP BY experiment, unit_id
),
units AS (
    SELECT f.experiment, f.unit_id, f.variant, f.first_ts, f.config_version,
           CASE WHEN v.variants > 1 THEN 1 ELSE 0 END AS multi_variant
    FROM first_exposures f
    JOIN unit_variant_counts v ON v.experiment = f.experiment AND v.unit_id = f.unit_id
),
analyzed AS (
    SELECT * FROM units WHERE multi_variant = 0
),

-- The users behind each unit (a device is linked to the users seen on its exposure rows).
unit_users AS (
    SELECT DISTINCT experiment, unit_id, user_id
    FROM exposures
    WHERE user_id IS NOT NULL
),
linked_units AS (
    SELECT DISTINCT experiment, unit_id FROM unit_users
),

-- Conversions named conversion_name, once per event_id, without synthetic rows.
conversion_rows AS (
    SELECT c.event_id, c.ts, c.user_id, c.value,
           COALESCE(c.synthetic, FALSE) AS synthetic,
           ROW_NUMBER() OVER (PARTITION BY c.event_id ORDER BY c.received_at, c.ts) AS copy_no
    FROM conversions c
    CROSS JOIN params p
    WHERE c.name = p.conversion_name
      AND (p.window_end IS NULL OR c.ts < p.window_end)
),
conversion_events AS (
    SELECT event_id, ts, user_id, value
    FROM conversion_rows
    WHERE copy_no = 1 AND NOT synthetic
),
conversion_row_counts AS (
    SELECT SUM(CASE WHEN copy_no > 1 THEN 1 ELSE 0 END) AS duplicate_conversion_rows,
           SUM(CASE WHEN copy_no = 1 AND synthetic THEN 1 ELSE 0 END) AS synthetic_conversion_rows
    FROM conversion_rows
),

-- Each (analyzed unit, conversion event of one of its users), and when it happened.
unit_conversions AS (
    SELECT u.experiment, u.unit_id, c.value,
           CASE WHEN c.ts < u.first_ts THEN 'before'
                WHEN p.conversion_window IS NOT NULL
                     AND c.ts >= u.first_ts + p.conversion_window THEN 'after_window'
                ELSE 'counted'
           END AS timing
    FROM analyzed u
    JOIN unit_users uu ON uu.experiment = u.experiment AND uu.unit_id = u.unit_id
    JOIN conversion_events c ON c.user_id = uu.user_id
    CROSS JOIN params p
),
unit_outcomes AS (
    SELECT experiment, unit_id,
           MAX(CASE WHEN timing = 'counted' THEN 1 ELSE 0 END) AS converted,
           SUM(CASE WHEN timing = 'counted' THEN COALESCE(value, 0) ELSE 0 END) AS revenue,
           SUM(CASE WHEN timing = 'before' THEN 1 ELSE 0 END) AS before_exposure
    FROM unit_conversions
    GROUP BY experiment, unit_id
),

variant_units AS (
    SELECT u.experiment, u.variant,
           SUM(1 - u.multi_variant) AS units,
           SUM(u.multi_variant) AS multi_variant_units,
           SUM(CASE WHEN u.multi_variant = 0 AND l.unit_id IS NULL THEN 1 ELSE 0 END)
               AS units_without_user,
           SUM(COALESCE(o.converted, 0)) AS converting_units,
           SUM(COALESCE(o.revenue, 0)) AS revenue_sum,
           SUM(COALESCE(o.revenue, 0) * COALESCE(o.revenue, 0)) AS revenue_sum_squares,
           SUM(COALESCE(o.before_exposure, 0)) AS conversions_before_exposure
    FROM units u
    LEFT JOIN unit_outcomes o ON o.experiment = u.experiment AND o.unit_id = u.unit_id
    LEFT JOIN linked_units l ON l.experiment = u.experiment AND l.unit_id = u.unit_id
    GROUP BY u.experiment, u.variant
),
variant_rows AS (
    SELECT experiment, variant,
           SUM(CASE WHEN row_use = 'duplicate' THEN 1 ELSE 0 END) AS duplicate_exposure_rows,
           SUM(CASE WHEN row_use = 'synthetic' THEN 1 ELSE 0 END) AS synthetic_exposure_rows,
           SUM(CASE WHEN row_use = 'wrong_unit' THEN 1 ELSE 0 END) AS wrong_unit_exposure_rows
    FROM classified
    GROUP BY experiment, variant
),

-- The config version each analyzed unit was drawn under. Within each preference class the
-- sort key is never null, so engines' different null orderings do not matter.
unit_versions AS (
    SELECT experiment, config_version
    FROM (
        SELECT u.experiment, v.config_version,
               ROW_NUMBER() OVER (
                   PARTITION BY u.experiment, u.unit_id
                   ORDER BY CASE WHEN v.config_version = u.config_version THEN 0
                                 WHEN v.served_from <= u.first_ts THEN 1
                                 ELSE 2 END,
                            CASE WHEN v.served_from <= u.first_ts THEN v.served_from END DESC,
                            v.served_from, v.config_version) AS n
        FROM analyzed u
        JOIN experiment_versions v ON v.experiment = u.experiment
    ) ranked
    WHERE n = 1
),
version_units AS (
    SELECT experiment, config_version, COUNT(*) AS units
    FROM unit_versions
    GROUP BY experiment, config_version
),
expected AS (
    SELECT w.experiment, w.variant, SUM(vu.units * w.weight) AS expected_units
    FROM version_units vu
    JOIN version_rows w ON w.config_version = vu.config_version AND w.experiment = vu.experiment
    GROUP BY w.experiment, w.variant
),

-- Every variant to report: those exposed, and every configured variant of those experiments.
variant_keys AS (
    SELECT DISTINCT experiment, variant FROM exposure_rows
    UNION
    SELECT w.experiment, w.variant
    FROM version_rows w
    JOIN (SELECT DISTINCT experiment FROM exposure_rows) x ON x.experiment = w.experiment
),
-- The latest version naming each variant, and each experiment's latest version.
variant_info AS (
    SELECT experiment, variant, variant_index
    FROM (
        SELECT w.experiment, w.variant, w.variant_index,
               ROW_NUMBER() OVER (PARTITION BY w.experiment, w.variant
                                  ORDER BY v.served_from DESC, w.config_version) AS n
        FROM version_rows w
        JOIN experiment_versions v
          ON v.config_version = w.config_version AND v.experiment = w.experiment
    ) ranked
    WHERE n = 1
),
experiment_info AS (
    SELECT experiment, config_version AS latest_config_version, hash_attribute, status
    FROM (
        SELECT w.experiment, w.config_version, w.hash_attribute, w.status,
               ROW_NUMBER() OVER (PARTITION BY w.experiment
                                  ORDER BY v.served_from DESC, w.config_version) AS n
        FROM version_rows w
        JOIN experiment_versions v
          ON v.config_version = w.config_version AND v.experiment = w.experiment
    ) ranked
    WHERE n = 1
)

SELECT k.experiment,
       k.variant,
       vi.variant_index,
       ei.hash_attribute,
       ei.status,
       ei.latest_config_version,
       COALESCE(vu.units, 0) AS units,
       COALESCE(vu.converting_units, 0) AS converting_units,
       COALESCE(vu.revenue_sum, 0) AS revenue_sum,
       COALESCE(vu.revenue_sum_squares, 0) AS revenue_sum_squares,
       ex.expected_units,
       ex.expected_units / SUM(ex.expected_units) OVER (PARTITION BY k.experiment)
           AS expected_share,
       COALESCE(vu.multi_variant_units, 0) AS multi_variant_units,
       COALESCE(vu.units_without_user, 0) AS units_without_user,
       COALESCE(vu.conversions_before_exposure, 0) AS conversions_before_exposure,
       COALESCE(vr.duplicate_exposure_rows, 0) AS duplicate_exposure_rows,
       COALESCE(vr.synthetic_exposure_rows, 0) AS synthetic_exposure_rows,
       COALESCE(vr.wrong_unit_exposure_rows, 0) AS wrong_unit_exposure_rows,
       COALESCE(cc.duplicate_conversion_rows, 0) AS duplicate_conversion_rows,
       COALESCE(cc.synthetic_conversion_rows, 0) AS synthetic_conversion_rows
FROM variant_keys k
LEFT JOIN variant_units vu ON vu.experiment = k.experiment AND vu.variant = k.variant
LEFT JOIN variant_rows vr ON vr.experiment = k.experiment AND vr.variant = k.variant
LEFT JOIN expected ex ON ex.experiment = k.experiment AND ex.variant = k.variant
LEFT JOIN variant_info vi ON vi.experiment = k.experiment AND vi.variant = k.variant
LEFT JOIN experiment_info ei ON ei.experiment = k.experiment
CROSS JOIN conversion_row_counts cc
ORDER BY k.experiment, COALESCE(vi.variant_index, 2147483647), k.variant
