-- One ClickHouse user per lambda command, as SQL: for ClickHouse Cloud (no users.xml) or a
-- server whose users you manage with SQL (22.8 and later). The same rights as
-- users.d/lambda-users.xml, which explains them (deploy_test.go keeps the grants equal).
-- Run as a user with access management, after replacing the passwords:
--   clickhouse-client --multiquery < deploy/config/clickhouse/lambda-users.sql
-- The grants name the demo dataset's tables (events_*): add each dataset's own.

CREATE SETTINGS PROFILE IF NOT EXISTS lambda_speed SETTINGS allow_ddl = 0;
CREATE SETTINGS PROFILE IF NOT EXISTS lambda_serve SETTINGS readonly = 2, allow_ddl = 0;

CREATE USER IF NOT EXISTS lambda_migrate IDENTIFIED WITH sha256_password BY 'REPLACE-ME-migrate';
CREATE USER IF NOT EXISTS lambda_speed IDENTIFIED WITH sha256_password BY 'REPLACE-ME-speed' SETTINGS PROFILE lambda_speed;
CREATE USER IF NOT EXISTS lambda_batch IDENTIFIED WITH sha256_password BY 'REPLACE-ME-batch';
CREATE USER IF NOT EXISTS lambda_serve IDENTIFIED WITH sha256_password BY 'REPLACE-ME-serve' SETTINGS PROFILE lambda_serve;

GRANT ALL ON lambda.* TO lambda_migrate;

GRANT SELECT ON lambda.* TO lambda_speed;
GRANT INSERT ON lambda.events_raw TO lambda_speed;
GRANT INSERT ON lambda.events_rejects TO lambda_speed;
GRANT INSERT ON lambda.events_speed TO lambda_speed;
GRANT INSERT ON lambda.speed_flushes TO lambda_speed;

GRANT SELECT, INSERT, CREATE TABLE, DROP TABLE, ALTER DELETE ON lambda.* TO lambda_batch;

GRANT SELECT ON lambda.* TO lambda_serve;
