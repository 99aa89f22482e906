// Evaluates the gateway's GrowthBook payload with the real JavaScript SDK, for growthbook_check.py.
//
//     node growthbook_eval.mjs BASE_URL CLIENT_KEY UNITS_JSON_FILE OUT_JSON_FILE [DECRYPTION_KEY]
//
// UNITS_JSON_FILE is {"experiments": [key, ...], "units": [{attributes}, ...]}. For each unit a
// new GrowthBook instance (so tracking dedup is per unit, as in a real client) is initialized
// from BASE_URL/api/features/CLIENT_KEY (the first fetches, the rest share the SDK's cache, all
// within one process run) and evaluates every experiment's feature with evalFeature().
//
// OUT_JSON_FILE gets:
//   "init":    how each instance got its features ({"network": 1, "cache": 1999});
//   "results": per unit, per experiment [value, source, experimentResult.inExperiment or null];
//   "tracked": every trackingCallback call [unit index, experiment.key, result.key,
//              result.hashAttribute, result.hashValue].
// Exits 1 if an instance fails to load its features.

import { readFileSync, writeFileSync } from "node:fs";
import { GrowthBook } from "@growthbook/growthbook";

const [baseUrl, clientKey, unitsFile, outFile, decryptionKey] = process.argv.slice(2);
if (!outFile) {
  console.error("usage: node growthbook_eval.mjs BASE_URL CLIENT_KEY UNITS_JSON_FILE OUT_JSON_FILE [DECRYPTION_KEY]");
  process.exit(2);
}
const { experiments, units } = JSON.parse(readFileSync(unitsFile, "utf8"));

const init = {};
const results = [];
const tracked = [];
for (let i = 0; i < units.length; i++) {
  const gb = new GrowthBook({
    apiHost: baseUrl,
    clientKey,
    ...(decryptionKey ? { decryptionKey } : {}),
    attributes: units[i],
    trackingCallback: (experiment, result) => {
      tracked.push([i, experiment.key, result.key, result.hashAttribute, result.hashValue]);
    },
  });
  const loaded = await gb.init({ timeout: 10000 });
  init[loaded.source] = (init[loaded.source] || 0) + 1;
  if (!loaded.success || Object.keys(gb.getFeatures()).length === 0) {
    console.error(`unit ${i}: features not loaded: ${JSON.stringify(loaded)}`);
    process.exit(1);
  }
  results.push(
    experiments.map((key) => {
      const r = gb.evalFeature(key);
      return [r.value, r.source, r.experimentResult ? r.experimentResult.inExperiment : null];
    }),
  );
  gb.destroy();
}
writeFileSync(outFile, JSON.stringify({ init, results, tracked }));
