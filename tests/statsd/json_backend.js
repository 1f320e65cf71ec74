// A backend for Etsy statsd (npm `statsd`) that appends each flush to
// `config.jsonBackend.file` as one JSON line, so tests/statsd_etsy.rs can
// compare what statsd flushed with what tailfold emitted for the same lines.
const fs = require('fs');

exports.init = function (startupTime, config, events) {
  const file = config.jsonBackend.file;
  events.on('flush', function (timestamp, metrics) {
    const sets = {};
    for (const key in metrics.sets) {
      sets[key] = metrics.sets[key].values();
    }
    const line = {
      timestamp: timestamp,
      counters: metrics.counters,
      gauges: metrics.gauges,
      timer_data: metrics.timer_data,
      sets: sets,
    };
    fs.appendFileSync(file, JSON.stringify(line) + '\n');
  });
  return true;
};
